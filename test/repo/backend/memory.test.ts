import { MemoryBackend, openBackend } from '../../../src/repo/index.js';
import { defineBackendConformance } from './conformance.js';
import { wrappedSpec } from './stacks.js';

defineBackendConformance('memory', {
  make: async () => ({ backend: new MemoryBackend(), cleanup: async () => {} }),
});

defineBackendConformance('memory, through the wrapper stack', {
  make: async () => ({ backend: openBackend(wrappedSpec('memory', 'memory:')), cleanup: async () => {} }),
});
