import { promises as fs } from 'node:fs';
import { dirname, join } from 'node:path';
import { errnoCode } from '../../util/index.js';
import { BackendError } from '../errors.js';
import { validateKey, type Backend, type ObjectInfo } from './backend.js';
import {
  TMP_DIR,
  createObjectFile,
  mapError,
  objectPath,
  renameIntoPlace,
  writeTempFile,
  type LocalFileSpec,
} from './local-files.js';

/**
 * Local directory backend. Durable, atomic writes: data goes to a temp file, is fdatasync'ed, then
 * renamed (put) or hard-linked (putIfAbsent: link fails with EEXIST if another writer won) to its
 * final name, and the directory is fsynced. No partial object is ever visible under a final name.
 * Worker threads may create objects the same way themselves (`fileStore`, local-files.ts); the
 * names they create become durable at `syncNames`.
 */
export class LocalBackend implements Backend {
  constructor(readonly root: string) {}

  get location(): string {
    return this.root;
  }

  filePath(key: string): string {
    return this.path(key);
  }

  fileStore(): LocalFileSpec {
    return { root: this.root };
  }

  async syncNames(keys: Iterable<string>): Promise<void> {
    const dirs = new Set<string>();
    for (const k of keys) dirs.add(dirname(this.path(k)));
    await Promise.all(
      [...dirs].map(async (d) => {
        try {
          await fsyncDir(d);
        } catch (err) {
          throw mapError(err, d.slice(this.root.length + 1) || '/', 'sync');
        }
      }),
    );
  }

  private path(key: string): string {
    validateKey(key);
    if (key === TMP_DIR || key.startsWith(`${TMP_DIR}/`)) throw new RangeError(`key '${key}' is reserved`);
    return objectPath(this.root, key);
  }

  async get(key: string): Promise<Buffer> {
    const p = this.path(key);
    try {
      return await fs.readFile(p);
    } catch (err) {
      throw mapError(err, key, 'read');
    }
  }

  async getRange(key: string, offset: number, length: number): Promise<Buffer> {
    const p = this.path(key);
    let fh: fs.FileHandle | undefined;
    try {
      fh = await fs.open(p, 'r');
      const st = await fh.stat();
      if (offset < 0 || length < 0 || offset + length > st.size) {
        throw new BackendError(
          'range',
          `range ${offset}+${length} is past the end of ${key} (${st.size} bytes)`,
        );
      }
      const buf = Buffer.allocUnsafe(length);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new BackendError('range', `short read of ${key}`);
        done += bytesRead;
      }
      return buf;
    } catch (err) {
      throw mapError(err, key, 'read');
    } finally {
      await fh?.close();
    }
  }

  async put(key: string, data: Buffer): Promise<void> {
    const p = this.path(key);
    try {
      renameIntoPlace(this.fileStore(), await writeTempFile(this.fileStore(), data), key);
      await fsyncDir(dirname(p));
    } catch (err) {
      throw mapError(err, key, 'write');
    }
  }

  async putIfAbsent(key: string, data: Buffer): Promise<boolean> {
    const p = this.path(key);
    try {
      if (!(await createObjectFile(this.fileStore(), key, data))) return false;
      await fsyncDir(dirname(p));
      return true;
    } catch (err) {
      throw mapError(err, key, 'write');
    }
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const st = await fs.stat(this.path(key));
      // Only a regular file is an object: a directory in its place is not "present" (list skips it).
      if (!st.isFile())
        throw Object.assign(new Error(`${key} is not a regular file`), {
          code: st.isDirectory() ? 'EISDIR' : 'NOT_A_FILE',
        });
      return { key, sizeBytes: st.size };
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
      throw mapError(err, key, 'stat');
    }
  }

  async exists(key: string): Promise<boolean> {
    return (await this.stat(key)) !== undefined;
  }

  async *list(prefix: string): AsyncIterable<ObjectInfo> {
    const slash = prefix.lastIndexOf('/');
    const dirKey = slash >= 0 ? prefix.slice(0, slash) : '';
    const start = dirKey === '' ? this.root : join(this.root, ...dirKey.split('/'));
    yield* this.walk(start, dirKey, prefix);
  }

  private async *walk(dir: string, dirKey: string, prefix: string): AsyncIterable<ObjectInfo> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fs.readdir(dir, { withFileTypes: true });
    } catch (err) {
      if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return;
      throw mapError(err, dirKey || '/', 'list');
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      if (e.name.startsWith('.')) continue;
      const key = dirKey === '' ? e.name : `${dirKey}/${e.name}`;
      if (dirKey === '' && e.name === TMP_DIR) continue;
      if (e.isDirectory()) {
        // Descend only where keys below can still match the prefix.
        if (prefix.startsWith(`${key}/`) || key.startsWith(prefix) || `${key}/`.startsWith(prefix)) {
          yield* this.walk(join(dir, e.name), key, prefix);
        }
      } else if (e.isFile() && key.startsWith(prefix)) {
        const st = await fs.stat(join(dir, e.name)).catch(() => undefined);
        if (st) yield { key, sizeBytes: st.size };
      }
    }
  }

  async delete(key: string): Promise<void> {
    try {
      await fs.rm(this.path(key), { force: true });
    } catch (err) {
      throw mapError(err, key, 'delete');
    }
  }

  /** Removes temp files left by killed writers (older than `olderThanMs`). */
  async removeStaleTemp(olderThanMs: number): Promise<number> {
    const tmpDir = join(this.root, TMP_DIR);
    let removed = 0;
    const names = await fs.readdir(tmpDir).catch(() => [] as string[]);
    const now = Date.now();
    for (const n of names) {
      const st = await fs.stat(join(tmpDir, n)).catch(() => undefined);
      if (st && now - st.mtimeMs > olderThanMs) {
        await fs.rm(join(tmpDir, n), { force: true });
        removed++;
      }
    }
    return removed;
  }

  async close(): Promise<void> {}
}

async function fsyncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
