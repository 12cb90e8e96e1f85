import {
  closeSync,
  constants as fsc,
  fstatSync,
  openSync,
  promises as fs,
  readSync,
  statSync,
} from 'node:fs';
import { dirname, join, resolve, sep } from 'node:path';
import { errnoCode } from '../../util/index.js';
import { BackendError, RepoNotEmptyError, isNotFound } from '../errors.js';
import {
  assertRange,
  validateKey,
  type Backend,
  type BackendCapabilities,
  type ObjectInfo,
  type Payload,
  type PutOptions,
} from './backend.js';
import { describeBackend } from './describe.js';
import {
  DEFAULT_DIR_MODE,
  DEFAULT_FILE_MODE,
  TMP_DIR,
  createObjectFile,
  describeNonFile,
  errnoMeaning,
  mapError,
  notAFile,
  objectPath,
  renameIntoPlace,
  writeTempFile,
  type LocalFileSpec,
} from './local-files.js';

/** The keys of `vmvault benchmark`'s objects, the only keys allowed under tmp/. */
const BENCH_KEY = /^tmp\/bench-[0-9a-f]{16}-\d{1,9}$/;

/**
 * Local directory backend. Durable, atomic writes: data goes to a temp file, is fdatasync'ed, then
 * renamed (put) or hard-linked (putIfAbsent: link fails with EEXIST if another writer won) to its
 * final name, and the directory is fsynced, and so is the parent of every directory made on the way
 * (once per directory and process). No partial object is ever visible under a final name.
 * Writes asked to be durable only `at-barrier` (the chunk store's, in its worker threads' own
 * stacks) skip that directory fsync: the names they create, and the directories they make, become
 * durable at `barrier` (docs/format.md, "Concurrency and crash safety").
 *
 * `blocking` (worker threads, `OpenRuntime.blocking`): reads and `stat` use synchronous fs calls,
 * cheaper than a round trip through libuv's thread pool each, which the main thread's I/O shares.
 *
 * Modes: `create` makes the repository owner-only (directory 0700, config 0600). New directories
 * then take the mode of the repository directory and new files that of `config`, so a repository
 * an administrator opened to a group (0750 / 0640) stays that way (docs/format.md, "Key layout").
 */
export interface LocalOptions {
  /** Synchronous reads and stats (this thread may block: a worker thread). Default false. */
  blocking?: boolean;
}

export class LocalBackend implements Backend {
  private readonly blocking: boolean;

  constructor(
    readonly root: string,
    opts: LocalOptions = {},
  ) {
    this.blocking = opts.blocking ?? false;
    // Another thread opens the same directory from this spec (a bare backend: no retry).
    describeBackend(this, { kind: 'local', location: resolve(root), retry: false });
  }

  readonly capabilities: BackendCapabilities = {
    // One local disk: a few operations in flight keep it busy (the chunk workers write their own).
    parallelOps: 4,
    atomicCreate: true, // link(2) fails with EEXIST for every writer but one, in any process
    needsBarrier: true, // a new name is durable only once its directory is fsynced
    modTimes: true,
    preferLargeReads: false,
  };

  /** Directories whose own entry in their parent is known durable (fsynced by this object). */
  private readonly durableEntries = new Set<string>();
  private spec: LocalFileSpec | undefined;

  get location(): string {
    return this.root;
  }

  /** Where and with which modes objects are created (local-files.ts). */
  private files(): LocalFileSpec {
    this.spec ??= this.existingModes();
    return this.spec;
  }

  /**
   * Leaves the first bytes of a write in a temp file, as a writer killed mid-write does (the
   * fault injector's half-written write; no object appears).
   */
  async leaveTempFile(data: Payload | Uint8Array): Promise<void> {
    await writeTempFile(this.files(), data);
  }

  /** The modes new objects get: those of the repository directory and its config. */
  private existingModes(): LocalFileSpec {
    const modeOf = (p: string): number | undefined => {
      try {
        return statSync(p).mode;
      } catch {
        return undefined;
      }
    };
    const rootMode = modeOf(this.root);
    const dirMode = rootMode === undefined ? DEFAULT_DIR_MODE : (rootMode & 0o2777) | 0o700;
    const configMode = modeOf(join(this.root, 'config'));
    const fileMode = ((configMode ?? dirMode) & 0o666) | 0o600;
    return { root: this.root, dirMode, fileMode };
  }

  /**
   * Makes the directory of a new repository (and its missing parents), owner-only whatever the
   * umask, with every new directory's parent fsynced; an existing directory must be writable and
   * is made owner-only too. Repository.init calls it after it found the location free.
   */
  async create(): Promise<void> {
    const root = this.root;
    const fail = (err: unknown): never => {
      const code = errnoCode(err);
      const m = errnoMeaning(err, false);
      if (code === 'ENOTDIR')
        throw new BackendError('other', `cannot create a repository at ${root}: part of the path is a file`, {
          cause: err,
          hint: 'choose a new or empty directory',
        });
      throw new BackendError(m.kind, `cannot create a repository at ${root}: ${m.reason}`, {
        cause: err,
        hint: m.hint ?? (m.kind === 'permission' ? 'choose a directory you can write to' : undefined),
      });
    };
    let made: string[] = [];
    try {
      const st = await fs.stat(root).catch((err: unknown) => {
        if (errnoCode(err) === 'ENOENT') return undefined;
        throw err;
      });
      if (st && !st.isDirectory())
        throw new BackendError('other', `${root} is a file, not a directory`, {
          hint: 'choose a new or empty directory for the repository',
        });
      if (st) {
        // Repository.init saw no objects; hidden files and empty directories count here too (a
        // home directory is not "empty"). lost+found (a fresh file system) and tmp/ (a killed
        // init's temp file) do not.
        const other = (await fs.readdir(root)).find((n) => n !== 'lost+found' && n !== TMP_DIR);
        if (other !== undefined) throw new RepoNotEmptyError(root, other);
        await fs.access(root, fsc.W_OK | fsc.X_OK);
        // A directory someone else owns but lets us write keeps its mode (new objects follow it).
        const owned = await fs.chmod(root, DEFAULT_DIR_MODE).then(
          () => true,
          (err: unknown) => {
            if (errnoCode(err) === 'EPERM') return false;
            throw err;
          },
        );
        if (!owned) return;
      } else {
        const first = await fs.mkdir(dirname(root), { recursive: true });
        made = first === undefined ? [] : chainFrom(first, dirname(root));
        await fs.mkdir(root, { mode: DEFAULT_DIR_MODE });
        made.push(root);
        await fs.chmod(root, DEFAULT_DIR_MODE); // mkdir's mode went through the umask
      }
      for (const d of made) await this.fsyncDir(dirname(d));
    } catch (err) {
      if (err instanceof BackendError || err instanceof RepoNotEmptyError) throw err;
      fail(err);
    }
    this.spec = { root, dirMode: DEFAULT_DIR_MODE, fileMode: DEFAULT_FILE_MODE };
  }

  /**
   * Makes the names of `keys` durable: one fsync per directory they are in, then the entries of
   * directories made since up to the root (objects' bytes were durable before their names appeared).
   * A key whose directory does not exist names no object: there is nothing to make durable.
   */
  async barrier(keys: Iterable<string>): Promise<void> {
    const dirs = new Set<string>();
    for (const k of keys) dirs.add(dirname(this.path(k)));
    const present = await Promise.all(
      [...dirs].map((d) =>
        this.syncDir(d).then(
          () => d,
          (err: unknown) => {
            if (isNotFound(err)) return undefined;
            throw err;
          },
        ),
      ),
    );
    await this.makeEntriesDurable(present.filter((d) => d !== undefined));
  }

  /**
   * Makes the entries of `dirs` in their parents durable, up to the repository directory: a
   * directory made since (by this thread or a worker) is lost in a crash until its parent is
   * fsynced. Once per directory and process; every parent is fsynced once per call.
   */
  private async makeEntriesDurable(dirs: readonly string[]): Promise<void> {
    let level = dirs.filter((d) => this.isBelowRoot(d) && !this.durableEntries.has(d));
    while (level.length > 0) {
      const parents = [...new Set(level.map((d) => dirname(d)))];
      await Promise.all(parents.map((p) => this.syncDir(p)));
      for (const d of level) this.durableEntries.add(d);
      level = parents.filter((p) => this.isBelowRoot(p) && !this.durableEntries.has(p));
    }
  }

  private isBelowRoot(dir: string): boolean {
    return dir.startsWith(this.root + sep) && dir.length > this.root.length + 1;
  }

  private async syncDir(dir: string): Promise<void> {
    try {
      await this.fsyncDir(dir);
    } catch (err) {
      throw mapError(err, dir.slice(this.root.length + 1) || '/', 'sync');
    }
  }

  /** Fsyncs one directory (every directory sync of this backend goes through here; tests count them). */
  protected async fsyncDir(dir: string): Promise<void> {
    const fh = await fs.open(dir, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }

  private path(key: string): string {
    validateKey(key);
    // tmp/ holds the temp files; only the benchmark's objects (tmp/bench-<16 hex>-<n>, docs/format.md)
    // are objects there, so that a run cut off leaves nothing the next day's open does not remove.
    if ((key === TMP_DIR || key.startsWith(`${TMP_DIR}/`)) && !BENCH_KEY.test(key))
      throw new RangeError(`key '${key}' is reserved`);
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
    const buf = Buffer.allocUnsafe(Number.isSafeInteger(length) && length > 0 ? length : 0);
    await this.readRange(key, offset, length, buf);
    return buf;
  }

  async getRangeInto(key: string, offset: number, dest: Uint8Array): Promise<number> {
    return this.readRange(key, offset, dest.length, dest);
  }

  /** Reads the range into `buf`; resolves to the object's size. */
  private async readRange(key: string, offset: number, length: number, buf: Uint8Array): Promise<number> {
    if (this.blocking) return this.readRangeSync(key, offset, length, buf);
    const p = this.path(key);
    let fh: fs.FileHandle | undefined;
    try {
      fh = await fs.open(p, 'r');
      const st = await fh.stat();
      assertRange(key, offset, length, st.size);
      let done = 0;
      while (done < length) {
        const { bytesRead } = await fh.read(buf, done, length - done, offset + done);
        if (bytesRead === 0) throw new BackendError('range', `short read of ${key}`);
        done += bytesRead;
      }
      return st.size;
    } catch (err) {
      throw mapError(err, key, 'read');
    } finally {
      await fh?.close();
    }
  }

  /** `readRange` with synchronous calls (a worker thread: see `blocking`). */
  private readRangeSync(key: string, offset: number, length: number, buf: Uint8Array): number {
    const p = this.path(key);
    let fd: number | undefined;
    try {
      fd = openSync(p, 'r');
      const size = fstatSync(fd).size;
      assertRange(key, offset, length, size);
      let done = 0;
      while (done < length) {
        const n = readSync(fd, buf, done, length - done, offset + done);
        if (n === 0) throw new BackendError('range', `short read of ${key}`);
        done += n;
      }
      return size;
    } catch (err) {
      throw mapError(err, key, 'read');
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  async put(key: string, data: Payload, opts: PutOptions = {}): Promise<void> {
    const p = this.path(key);
    try {
      renameIntoPlace(this.files(), await writeTempFile(this.files(), data), key);
      if (opts.durable === 'at-barrier') return;
      await this.fsyncDir(dirname(p));
    } catch (err) {
      throw mapError(err, key, 'write');
    }
    await this.makeEntriesDurable([dirname(p)]);
  }

  async putIfAbsent(key: string, data: Payload, opts: PutOptions = {}): Promise<boolean> {
    const p = this.path(key);
    try {
      if (!(await createObjectFile(this.files(), key, data))) return false;
      if (opts.durable === 'at-barrier') return true;
      await this.fsyncDir(dirname(p));
    } catch (err) {
      throw mapError(err, key, 'write');
    }
    await this.makeEntriesDurable([dirname(p)]);
    return true;
  }

  async stat(key: string): Promise<ObjectInfo | undefined> {
    try {
      const p = this.path(key);
      // Blocking: no exception for the common "absent" (a new chunk), which costs a stack trace.
      const st = this.blocking ? statSync(p, { throwIfNoEntry: false }) : await fs.stat(p);
      if (st === undefined) return undefined;
      // Only a regular file is an object: a directory in its place is not "present" (list skips it).
      if (!st.isFile()) throw notAFile(key, describeNonFile(st));
      return { key, sizeBytes: st.size, modifiedMs: st.mtimeMs };
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
        if (st?.isFile()) yield { key, sizeBytes: st.size, modifiedMs: st.mtimeMs };
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

/** `from` and every directory below it down to `to` (`from` is an ancestor of `to` or `to` itself). */
function chainFrom(from: string, to: string): string[] {
  const out: string[] = [];
  for (let d = to; ; d = dirname(d)) {
    out.unshift(d);
    if (d === from || dirname(d) === d) return out;
  }
}
