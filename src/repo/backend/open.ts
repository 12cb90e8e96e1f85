import { resolve } from 'node:path';
import { UsageError } from '../../util/index.js';
import type { Backend } from './backend.js';
import { LocalBackend } from './local.js';
import { MemoryBackend } from './memory.js';

/**
 * The one composition point: a location string becomes a backend (plus, later, its wrapper stack:
 * retry, limits). `memory:` is for tests. S3 locations (`s3:...`) arrive with the S3 backend.
 */
export function openBackend(location: string): Backend {
  if (location === 'memory:') return new MemoryBackend();
  if (/^[a-z][a-z0-9+]*:\/\//i.test(location) || location.startsWith('s3:')) {
    throw new UsageError(`unsupported repository location '${location}'`, 'use a local directory path');
  }
  return new LocalBackend(resolve(location));
}
