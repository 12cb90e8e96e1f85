import { MemoryBackend } from '../../../src/repo/index.js';
import { defineBackendConformance } from './conformance.js';

defineBackendConformance('memory', {
  make: async () => ({ backend: new MemoryBackend(), cleanup: async () => {} }),
});
