import { spawn } from 'node:child_process';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { LocalBackend } from '../../../src/repo/index.js';
import { makeTmpDir } from '../../helpers/tmp.js';
import { defineBackendConformance } from './conformance.js';

let current: string | undefined;

/** Several OS processes race putIfAbsent on one key; each prints whether it created it. */
async function raceInProcesses(key: string, writers: number): Promise<boolean[]> {
  const script = `
    import { LocalBackend } from ${JSON.stringify(new URL('../../../src/repo/backend/local.ts', import.meta.url).pathname)};
    const b = new LocalBackend(process.argv[1]);
    const r = await b.putIfAbsent(process.argv[2], Buffer.alloc(1 << 20, 3));
    process.stdout.write(String(r));`;
  const runs = Array.from(
    { length: writers },
    () =>
      new Promise<boolean>((resolve, reject) => {
        const p = spawn(
          process.execPath,
          ['--import', 'tsx', '--input-type=module', '-e', script, current!, key],
          { stdio: ['ignore', 'pipe', 'inherit'] },
        );
        let out = '';
        p.stdout.on('data', (d: Buffer) => (out += d.toString()));
        p.on('close', (code) =>
          code === 0 ? resolve(out === 'true') : reject(new Error(`writer exited ${code}`)),
        );
      }),
  );
  return Promise.all(runs);
}

defineBackendConformance('local', {
  make: async () => {
    const t = await makeTmpDir();
    current = t.dir;
    return { backend: new LocalBackend(t.dir), cleanup: t.cleanup };
  },
  raceInProcesses,
});

describe('local backend specifics', () => {
  it('leaves no temp files behind and maps ENOSPC-like errors to typed errors', async () => {
    const t = await makeTmpDir();
    try {
      const b = new LocalBackend(t.dir);
      await b.put('a/b', Buffer.from('x'));
      expect(await b.putIfAbsent('a/b', Buffer.from('y'))).toBe(false);
      expect(await readdir(join(t.dir, 'tmp'))).toEqual([]);
      // A root that is a regular file: every write fails with a typed error, not a raw errno.
      await b.put('plainfile', Buffer.from('x'));
      const broken = new LocalBackend(join(t.dir, 'plainfile'));
      await expect(broken.put('k/x', Buffer.from('x'))).rejects.toMatchObject({
        code: expect.stringMatching(/^BACKEND_/),
      });
    } finally {
      await t.cleanup();
    }
  });
});
