import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { backupImages } from '../../src/backup/index.js';
import { Repository } from '../../src/repo/index.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';

describe('snapshot edits', () => {
  it('an edit killed before the old manifest was deleted: listings show the latest edit only; forget removes both', async () => {
    const t = await makeTmpDir();
    try {
      const img = join(t.dir, 'a.raw');
      await writeFile(img, seededBytes(256 * 1024, 4));
      const repo = await Repository.init(join(t.dir, 'repo'));
      try {
        const s = await backupImages(repo, { vm: 'v', images: [{ path: img, target: 'vda' }] });
        const edited = await repo.editSnapshot(s, { addTags: ['x'] });
        expect(edited.id).not.toBe(s.id);
        expect(edited.origin).toEqual({ repository: repo.config.id, snapshot: s.id });
        // The old manifest back, as a process killed between the two steps leaves it.
        const { id: _id, ...old } = s;
        await repo.putSnapshot(old);
        const listed = await repo.listSnapshots();
        expect(listed.map((x) => x.id)).toEqual([edited.id]);
        expect(listed[0]!.superseded).toEqual([s.id]);
        // A second edit and then forget remove every manifest of the origin.
        const again = await repo.editSnapshot(listed[0]!, { protected: true });
        expect(again.origin).toEqual(edited.origin);
        expect((await repo.listSnapshots()).map((x) => [x.id, x.protected])).toEqual([[again.id, true]]);
        await repo.forgetSnapshot((await repo.listSnapshots())[0]!);
        expect(await repo.listSnapshots()).toEqual([]);
        expect((await repo.scanSnapshots()).damaged).toEqual([]);
      } finally {
        await repo.close();
      }
    } finally {
      await t.cleanup();
    }
  });
});
