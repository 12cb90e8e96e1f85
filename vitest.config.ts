import { defineConfig } from 'vitest/config';

// Two projects:
//  - fast: unit tests, backend conformance, NBD peers (qemu-nbd, nbdkit, ...), CLI end-to-end.
//  - vm:   tests that need a libvirt daemon and real QEMU domains (files named *.vm.test.ts).
// `npm test` runs both; `npm run test:fast` runs only the first.
export default defineConfig({
  test: {
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 120_000,
    projects: [
      {
        test: {
          name: 'fast',
          include: ['test/**/*.test.ts'],
          exclude: ['test/**/*.vm.test.ts', 'node_modules/**'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'vm',
          include: ['test/**/*.vm.test.ts'],
          // One private libvirtd per run (own namespace, sockets, state); tests read its URI with
          // libvirtUri() from test/helpers/libvirtd.ts.
          globalSetup: ['test/helpers/libvirtd.ts'],
          testTimeout: 300_000,
          hookTimeout: 300_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
