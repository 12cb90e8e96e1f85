import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openRepo } from '../../src/cli/context.js';
import { Repository } from '../../src/repo/index.js';
import { makeTmpDir } from '../helpers/tmp.js';

describe('openRepo', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-context-'));
    repo = join(dir, 'repo');
    await (await Repository.init(repo)).close();
  });
  afterAll(async () => cleanup?.());

  it('commands that only read get a read-only stack: no write reaches the repository, in any thread', async () => {
    const r = await openRepo({ repo }, 'read');
    try {
      await expect(r.backend.put('probe', Buffer.from('x'))).rejects.toThrow(/opened read-only/);
      // A chunk goes into a worker's open pack; the pack's write (at flush) is what is refused.
      await expect(
        (async () => {
          await r.chunks.put(Buffer.alloc(64 * 1024, 7));
          await r.chunks.flush();
        })(),
      ).rejects.toThrow(/opened read-only/);
      expect(await r.backend.exists('probe')).toBe(false);
    } finally {
      await r.close();
    }
  });

  it('commands that write get a writable stack', async () => {
    const r = await openRepo({ repo });
    try {
      await r.backend.put('probe', Buffer.from('x'));
      expect(await r.backend.exists('probe')).toBe(true);
      await r.backend.delete('probe');
    } finally {
      await r.close();
    }
  });
});
