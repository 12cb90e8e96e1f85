import { randomBytes } from 'node:crypto';
import { promises as fs, constants as fsc } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { errnoCode, pidAlive, VmvaultError } from '../util/index.js';
import { outputError } from './image-writer.js';

/**
 * How a restore puts files in place: everything is written under a temporary name in the output
 * directory (`.<name>.vmvault-tmp-<pid>-<random>`), synced, and only when the whole restore has
 * succeeded given its real name (without ever replacing an existing file) and the directory
 * synced. A failed restore removes its temporary files; one that was killed leaves them behind,
 * named after the output and the process, and the next restore to the same output removes those
 * whose process is gone. So a restore either produces its output or nothing at the output path.
 */

const TEMP_MARK = '.vmvault-tmp-';
/** Keeps temporary names within NAME_MAX (255) whatever the output's name. */
const MAX_BASE = 200;

function tempPrefix(finalPath: string): string {
  return `.${basename(finalPath).slice(0, MAX_BASE)}${TEMP_MARK}`;
}

/** A fresh temporary name beside `finalPath`, in the same directory (so a rename stays atomic). */
export function tempPathFor(finalPath: string): string {
  const p = resolve(finalPath);
  return join(dirname(p), `${tempPrefix(p)}${process.pid}-${randomBytes(4).toString('hex')}`);
}

/**
 * Removes the temporary files an interrupted restore of `finalPath` left (their process no
 * longer runs); returns their paths. Those of a restore still running are left alone.
 */
export async function removeStaleTemps(finalPath: string): Promise<string[]> {
  const p = resolve(finalPath);
  const dir = dirname(p);
  const prefix = tempPrefix(p);
  let names: string[];
  try {
    names = await fs.readdir(dir);
  } catch {
    return [];
  }
  const removed: string[] = [];
  for (const n of names) {
    if (!n.startsWith(prefix)) continue;
    const m = /^(\d+)-[0-9a-f]+$/.exec(n.slice(prefix.length));
    if (!m || pidAlive(Number(m[1]))) continue;
    const stale = join(dir, n);
    const st = await fs.lstat(stale).catch(() => undefined);
    if (!st?.isFile()) continue;
    await fs.rm(stale, { force: true });
    removed.push(stale);
  }
  return removed;
}

export function outputExists(path: string): VmvaultError {
  return new VmvaultError('OUTPUT_EXISTS', `output ${path} exists`, {
    hint: 'choose another path, remove it first, or use --in-place to roll it back',
  });
}

/**
 * Gives the finished temporary file its real name, never replacing a file that appeared there
 * meanwhile: a hard link (fails if the name exists), then the temporary name is removed. Where
 * the file system has no hard links, a rename after a last existence check.
 */
export async function commitFile(tmpPath: string, finalPath: string): Promise<void> {
  try {
    await fs.link(tmpPath, finalPath);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'EEXIST') throw outputExists(finalPath);
    if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP' && code !== 'ENOSYS')
      throw outputError(finalPath, err);
    if (
      await fs.lstat(finalPath).then(
        () => true,
        () => false,
      )
    )
      throw outputExists(finalPath);
    try {
      await fs.rename(tmpPath, finalPath);
    } catch (e) {
      throw outputError(finalPath, e);
    }
    return;
  }
  await fs.rm(tmpPath, { force: true });
}

/** Makes the entries of `dir` (a new or renamed file) durable. */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: fs.FileHandle | undefined;
  try {
    fh = await fs.open(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
    await fh.sync();
  } catch (err) {
    // Some file systems cannot sync a directory; the data itself was synced.
    const code = errnoCode(err);
    if (code !== 'EINVAL' && code !== 'ENOTSUP' && code !== 'EOPNOTSUPP') throw outputError(dir, err);
  } finally {
    await fh?.close().catch(() => {});
  }
}

/**
 * Creates `dir` and the missing directories above it, syncing the parent of each one created so
 * the new entries survive a power loss.
 */
export async function makeDirDurably(dir: string): Promise<void> {
  const target = resolve(dir);
  let first: string | undefined;
  try {
    first = await fs.mkdir(target, { recursive: true });
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'EEXIST' || code === 'ENOTDIR')
      throw new VmvaultError('OUTPUT_FAILED', `cannot create directory ${target}: a file is in the way`, {
        hint: 'choose another output directory',
        cause: err,
      });
    throw outputError(target, err);
  }
  if (first === undefined) return;
  const created = resolve(first);
  for (let d = target; ; d = dirname(d)) {
    await fsyncDir(dirname(d));
    if (d === created || dirname(d) === d) break;
  }
}

/** Writes `data` into a new file (O_EXCL, 0600) and syncs it. */
export async function writeNewFile(path: string, data: Buffer | string): Promise<void> {
  let fh: fs.FileHandle;
  try {
    fh = await fs.open(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  } catch (err) {
    throw outputError(path, err);
  }
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => {});
    await fs.rm(path, { force: true });
    throw outputError(path, err);
  }
  await fh.close();
}
