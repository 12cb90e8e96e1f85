import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { reapStaleQemuNbd } from '../nbd/index.js';
import { pidAlive } from '../util/index.js';

/**
 * Creates a private runtime directory `<parent>/<prefix><our pid>-XXXXXX` (NBD sockets, qemu-nbd
 * pid files, scratch files). First it clears what killed runs left there: for every
 * `<prefix><pid>-*` whose pid is gone, a qemu-nbd still serving from it is stopped and the
 * directory removed. `mode` is applied to the new directory (QEMU may run as another user).
 */
export async function makeRuntimeDir(parent: string, prefix: string, mode = 0o700): Promise<string> {
  const pattern = new RegExp(`^${prefix.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}(\\d+)-`);
  try {
    for (const n of await fs.readdir(parent)) {
      const m = pattern.exec(n);
      if (!m || pidAlive(Number(m[1]))) continue;
      const dir = join(parent, n);
      await reapStaleQemuNbd(dir);
      await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
    }
  } catch {
    /* parent unreadable: mkdtemp reports it */
  }
  const dir = await fs.mkdtemp(join(parent, `${prefix}${process.pid}-`));
  await fs.chmod(dir, mode);
  return dir;
}
