import { constants, createReadStream, openSync, closeSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { join, resolve } from 'node:path';
import { VmvaultError, exec, printable } from '../../util/index.js';
import { commitFile, removeStaleTemps, tempPathFor } from '../output-file.js';
import { extractTar, type ExtractResult } from './extract.js';
import { Guestfish, GuestfishError, gfQuote, type GuestDrive } from './guestfish.js';
import {
  GuestPathNotFoundError,
  joinGuest,
  parseFilesystems,
  resolveGuestPath,
  type GuestFilesystem,
} from './paths.js';

/** One entry of a listing (`vmvault files ... ls`). */
export interface GuestEntry {
  /** The virtual path, e.g. /part1/etc/hostname. Guest names are shown as UTF-8 (invalid bytes as U+FFFD). */
  path: string;
  name: string;
  type: 'filesystem' | 'dir' | 'file' | 'symlink' | 'char' | 'block' | 'fifo' | 'socket' | 'unknown';
  size: number;
  /** Permission bits (with set-id and sticky), e.g. 0o644. */
  mode: number;
  /** ISO 8601, UTC. */
  mtime?: string;
  /** A symlink's target, as text (never followed). */
  target?: string;
  /** A filesystem's type (ext4, xfs, ...) and device in the appliance. */
  fsType?: string;
  device?: string;
}

export interface GetResult extends ExtractResult {
  /** What was extracted: a file, a directory (tree) or a symlink. */
  type: 'file' | 'dir' | 'symlink';
  dest: string;
}

const TYPE_BITS: Record<number, GuestEntry['type']> = {
  0o040000: 'dir',
  0o100000: 'file',
  0o120000: 'symlink',
  0o020000: 'char',
  0o060000: 'block',
  0o010000: 'fifo',
  0o140000: 'socket',
};

interface Stat {
  type: GuestEntry['type'];
  mode: number;
  size: number;
  mtime: number;
}

function parseStat(text: string): Stat | undefined {
  const f = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(st_\w+): (-?\d+)$/.exec(line);
    if (m) f.set(m[1]!, Number(m[2]));
  }
  const mode = f.get('st_mode');
  if (mode === undefined) return undefined;
  return {
    type: TYPE_BITS[mode & 0o170000] ?? 'unknown',
    mode: mode & 0o7777,
    size: f.get('st_size') ?? 0,
    mtime: f.get('st_mtime_sec') ?? 0,
  };
}

const iso = (sec: number): string | undefined => {
  const d = new Date(sec * 1000);
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString();
};

/** Names in an `ls0` output file: NUL-separated bytes. */
function splitNames(b: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let at = 0; at < b.length;) {
    let z = b.indexOf(0, at);
    if (z < 0) z = b.length;
    if (z > at) out.push(b.subarray(at, z));
    at = z + 1;
  }
  return out;
}

export class GuestPathError extends VmvaultError {
  constructor(message: string, hint?: string) {
    super('GUEST_PATH', message, { hint });
  }
}

/**
 * The filesystems of a snapshot's disks through one libguestfs appliance: each filesystem is
 * mounted read-only at its virtual name (`/part1`, `/lvm/vg0/root`) in the appliance's empty root
 * (mkmountpoint), so an appliance path is the virtual path itself. Paths are checked with
 * `realpath` before use: a symlink in the guest never leads to the appliance's own files.
 */
export class GuestFiles {
  private readonly mounted = new Set<string>();
  private readonly madePoints = new Set<string>();
  private seq = 0;

  private constructor(
    private readonly gf: Guestfish,
    /** Private (0700) directory for the FIFOs and lists guestfish writes. */
    private readonly runDir: string,
    readonly filesystems: GuestFilesystem[],
  ) {}

  /** Launches the appliance over `drives` (named `disks`, same order) and lists the filesystems. */
  static async launch(
    drives: readonly GuestDrive[],
    disks: readonly string[],
    runDir: string,
    signal?: AbortSignal,
  ): Promise<GuestFiles> {
    const gf = Guestfish.start(drives);
    const onAbort = (): void => gf.kill(signal?.reason instanceof Error ? signal.reason : undefined);
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      if (signal?.aborted) onAbort();
      const [, list] = await gf.runEach(['run', 'list-filesystems']);
      const filesystems = parseFilesystems(list!, disks);
      const sizes = await gf.runEach(filesystems.map((f) => `-blockdev-getsize64 ${gfQuote(f.device)}`));
      filesystems.forEach((f, i) => {
        const n = Number(sizes[i]!.trim());
        if (sizes[i]!.trim() !== '' && Number.isSafeInteger(n)) f.sizeBytes = n;
      });
      return new GuestFiles(gf, runDir, filesystems);
    } catch (err) {
      gf.kill();
      signal?.removeEventListener('abort', onAbort);
      throw err;
    }
  }

  /** Creates the mount points of `name` (each component) in the appliance's root. */
  private async makeMountPoint(name: string): Promise<void> {
    const parts = name.split('/');
    const cmds: string[] = [];
    for (let i = 1; i <= parts.length; i++) {
      const p = `/${parts.slice(0, i).join('/')}`;
      if (this.madePoints.has(p)) continue;
      this.madePoints.add(p);
      cmds.push(`mkmountpoint ${gfQuote(p)}`);
    }
    if (cmds.length) await this.gf.runEach(cmds);
  }

  /** Mounts a filesystem read-only at its virtual name; a failure is one line naming it. */
  private async ensureMounted(fs: GuestFilesystem): Promise<void> {
    if (this.mounted.has(fs.name)) return;
    await this.makeMountPoint(fs.name);
    const out = await this.gf.runEach([
      `-mount-ro ${gfQuote(fs.device)} ${gfQuote(`/${fs.name}`)}`,
      'mountpoints',
    ]);
    if (!out[1]!.split('\n').some((l) => l.endsWith(`: /${fs.name}`)))
      throw new GuestfishError(
        `cannot mount /${fs.name} (${fs.device}, ${printable(fs.fsType, 40)}) read-only`,
        fs.fsType === 'unknown' || fs.fsType === 'swap'
          ? 'it holds no filesystem libguestfs can read'
          : 'the filesystem may be damaged or need a log replay; run with LIBGUESTFS_DEBUG=1 to see why',
      );
    this.mounted.add(fs.name);
  }

  /**
   * The appliance path of a virtual path inside a filesystem, checked: the directory holding it,
   * with its symlinks resolved, is still inside that filesystem. Undefined when it does not exist.
   */
  private async checkedPath(
    fs: GuestFilesystem,
    vpath: string,
    inner: string,
  ): Promise<{ path: string; stat: Stat } | undefined> {
    await this.ensureMounted(fs);
    const root = `/${fs.name}`;
    const full = inner === '/' ? root : `${root}${inner}`;
    if (inner !== '/') {
      // Each directory on the way, symlinks resolved: the first one missing means not found, the
      // first one outside the filesystem (an absolute symlink, `..` too far) is refused.
      const parts = inner.split('/').filter(Boolean).slice(0, -1);
      const prefixes = parts.map((_, i) => `${root}/${parts.slice(0, i + 1).join('/')}`);
      const reals = await this.gf.runEach(prefixes.map((p) => `-realpath ${gfQuote(p)}`));
      const leaves = (): GuestPathError =>
        new GuestPathError(
          `${printable(vpath, 300)} goes through a symlink that leaves /${fs.name}`,
          'give the path the symlink points to (see it with ls on its directory)',
        );
      for (const [i, r] of reals.entries()) {
        const real = r.replace(/\n$/, '');
        if (real === '') {
          // Missing, or a symlink that cannot resolve here: an absolute target names a path of
          // the guest's root, which the appliance does not have at /.
          const link = (await this.gf.run(`-readlink ${gfQuote(prefixes[i]!)}`)).replace(/\n$/, '');
          if (link.startsWith('/')) throw leaves();
          return undefined;
        }
        if (real !== root && !real.startsWith(`${root}/`)) throw leaves();
      }
    }
    const stat = parseStat(await this.gf.run(`-lstatns ${gfQuote(full)}`));
    return stat ? { path: full, stat } : undefined;
  }

  private notFound(vpath: string): GuestPathNotFoundError {
    const parent = vpath.slice(0, Math.max(1, vpath.lastIndexOf('/')));
    return new GuestPathNotFoundError(vpath, `list its directory: ls ${printable(parent, 200)}`);
  }

  private entry(vpath: string, name: string, st: Stat): GuestEntry {
    const mtime = iso(st.mtime);
    return { path: vpath, name, type: st.type, size: st.size, mode: st.mode, ...(mtime ? { mtime } : {}) };
  }

  private async readlinks(entries: Array<{ e: GuestEntry; path: string | Buffer }>): Promise<void> {
    const links = entries.filter((x) => x.e.type === 'symlink');
    const out = await this.gf.runEach(links.map((x) => `-readlink ${gfQuote(x.path)}`));
    links.forEach((x, i) => (x.e.target = out[i]!.replace(/\n$/, '')));
  }

  /** The entries of a directory, or the one entry a path names (like `ls -l`). */
  async list(vpath: string): Promise<GuestEntry[]> {
    const r = resolveGuestPath(vpath, this.filesystems);
    if (r.kind === 'virtual')
      return r.children.map(({ name, fs }) =>
        fs
          ? {
              path: joinGuest(r.path, name),
              name,
              type: 'filesystem',
              size: fs.sizeBytes ?? 0,
              mode: 0o555,
              fsType: fs.fsType,
              device: fs.device,
            }
          : { path: joinGuest(r.path, name), name, type: 'dir', size: 0, mode: 0o555 },
      );
    const found = await this.checkedPath(r.fs, r.path, r.inner);
    if (!found) throw this.notFound(r.path);
    if (found.stat.type !== 'dir') {
      const e = this.entry(r.path, r.path.slice(r.path.lastIndexOf('/') + 1), found.stat);
      await this.readlinks([{ e, path: found.path }]);
      return [e];
    }
    const listFile = join(this.runDir, `ls-${++this.seq}`);
    await this.gf.run(`ls0 ${gfQuote(found.path)} ${gfQuote(listFile)}`);
    const names = splitNames(await fs.readFile(listFile));
    await fs.rm(listFile, { force: true });
    const paths = names.map((n) => Buffer.concat([Buffer.from(`${found.path}/`), n]));
    const stats = await this.gf.runEach(paths.map((p) => `-lstatns ${gfQuote(p)}`));
    // Appliance paths of guest names stay bytes: a name need not be UTF-8.
    const entries: Array<{ e: GuestEntry; path: Buffer }> = [];
    names.forEach((n, i) => {
      const st = parseStat(stats[i]!);
      if (!st) return; // gone meanwhile: the disk is read-only, so it cannot happen
      const name = n.toString('utf8');
      entries.push({ e: this.entry(joinGuest(r.path, name), name, st), path: paths[i]! });
    });
    await this.readlinks(entries);
    return entries.map((x) => x.e).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  /**
   * Extracts a file, a symlink (as a symlink, not followed) or a directory tree (see extract.ts)
   * to `dest`, which must not exist. Nothing is left at `dest` when it fails.
   */
  async get(vpath: string, dest: string): Promise<GetResult> {
    const r = resolveGuestPath(vpath, this.filesystems);
    const target = resolve(dest);
    if (await fs.lstat(target).catch(() => undefined))
      throw new VmvaultError('OUTPUT_EXISTS', `output ${target} exists`, { hint: 'give a new path with -o' });
    const empty = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0, skipped: [] };
    if (r.kind === 'virtual')
      throw new GuestPathError(
        `${printable(r.path, 200)} is not inside a filesystem`,
        `get a filesystem's root or a path in it, e.g. /${r.children[0]?.name ?? 'part1'}/`,
      );
    const found = await this.checkedPath(r.fs, r.path, r.inner);
    if (!found) throw this.notFound(r.path);
    await removeStaleTemps(target);
    const tmp = tempPathFor(target);
    const st = found.stat;
    if (st.type === 'symlink') {
      const link = (await this.gf.run(`readlink ${gfQuote(found.path)}`)).replace(/\n$/, '');
      await fs.symlink(link, target);
      return { ...empty, symlinks: 1, type: 'symlink', dest: target };
    }
    if (st.type === 'file') {
      const fh = await fs.open(tmp, 'wx', 0o600);
      try {
        try {
          await this.throughFifo(`download ${gfQuote(found.path)}`, async (src) => {
            for await (const b of src) await fh.write(b as Buffer);
          });
          await fh.chmod(st.mode & 0o777);
          await fh.sync();
        } finally {
          await fh.close();
        }
        await fs.utimes(tmp, st.mtime, st.mtime);
        await commitFile(tmp, target);
      } catch (err) {
        await fs.rm(tmp, { force: true });
        throw err;
      }
      return { ...empty, files: 1, bytes: st.size, type: 'file', dest: target };
    }
    if (st.type === 'dir') {
      await fs.mkdir(tmp, { mode: 0o700 });
      try {
        const res = await this.throughFifo(`tar-out ${gfQuote(found.path)}`, (src) => extractTar(src, tmp));
        if (await fs.lstat(target).catch(() => undefined))
          throw new VmvaultError('OUTPUT_EXISTS', `output ${target} appeared during the extraction`, {
            hint: 'give a new path with -o',
          });
        await fs.rename(tmp, target);
        return { ...res, dirs: res.dirs + 1, type: 'dir', dest: target };
      } catch (err) {
        await fs.rm(tmp, { recursive: true, force: true });
        throw err;
      }
    }
    throw new GuestPathError(`${printable(r.path, 200)} is a ${st.type}, not a file or directory`);
  }

  /**
   * Runs a guestfish command that writes to a file (its last argument: a FIFO in the run
   * directory) and hands `consume` the bytes as they come. If guestfish fails before it opens
   * the FIFO, a writer opened here unblocks the reader.
   */
  private async throughFifo<T>(
    command: string,
    consume: (src: AsyncIterable<Buffer>) => Promise<T>,
  ): Promise<T> {
    const fifo = join(this.runDir, `fifo-${++this.seq}`);
    await exec('mkfifo', ['-m', '600', fifo]);
    const stream = createReadStream(fifo, { highWaterMark: 1024 * 1024 });
    let opened = false;
    stream.once('open', () => (opened = true));
    let cmdErr: unknown;
    const cmd = this.gf.run(`${command} ${gfQuote(fifo)}`).catch((e: unknown) => {
      cmdErr = e;
      // Unblock a reader still waiting in open(): a writer that closes at once means EOF.
      const poke = setInterval(() => {
        if (opened || stream.destroyed) return clearInterval(poke);
        try {
          closeSync(openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK));
        } catch {
          // no reader yet: try again
        }
      }, 20);
    });
    try {
      const out = await consume(stream);
      await cmd;
      if (cmdErr) throw cmdErr;
      return out;
    } catch (err) {
      stream.destroy();
      await cmd;
      throw cmdErr ?? err;
    } finally {
      stream.destroy();
      await fs.rm(fifo, { force: true });
    }
  }

  /**
   * Mounts every filesystem at DIR/<its name> through FUSE (guestfish mount-local, read-only) and
   * resolves with the names mounted and those that failed; `served` settles when DIR is
   * unmounted (unmount()).
   */
  async mountAll(dir: string): Promise<{ mounted: string[]; failed: string[]; served: Promise<void> }> {
    const mountable = this.filesystems.filter((f) => f.fsType !== 'swap' && f.fsType !== 'unknown');
    for (const f of mountable) await this.makeMountPoint(f.name);
    const out = await this.gf.runEach([
      ...mountable.map((f) => `-mount-ro ${gfQuote(f.device)} ${gfQuote(`/${f.name}`)}`),
      'mountpoints',
    ]);
    const points = out[out.length - 1]!.split('\n');
    const mounted = mountable
      .filter((f) => points.some((l) => l.endsWith(`: /${f.name}`)))
      .map((f) => f.name);
    const failed = mountable.map((f) => f.name).filter((n) => !mounted.includes(n));
    if (mounted.length === 0)
      throw new GuestfishError(
        'no filesystem of the disk could be mounted',
        'list them with vmvault files ... ls /',
      );
    await this.gf.run(`mount-local ${gfQuote(resolve(dir))} readonly:true`);
    const served = this.gf.runEach(['mount-local-run']).then(() => undefined);
    served.catch(() => undefined);
    return { mounted, failed, served };
  }

  /** Unmounts a mountAll directory (guestunmount retries while it is busy). */
  static async unmount(dir: string): Promise<void> {
    const r = await exec('guestunmount', ['--quiet', '--retry=5', resolve(dir)], { allowFailure: true });
    if (r.code !== 0) {
      const f = await exec('fusermount3', ['-u', '-z', resolve(dir)], { allowFailure: true });
      if (f.code !== 0)
        throw new GuestfishError(
          `cannot unmount ${dir}: ${printable(r.stderr.trim() || f.stderr.trim(), 200)}`,
          `close what uses it, then run guestunmount ${dir}`,
        );
    }
  }

  async close(): Promise<void> {
    await this.gf.close();
  }

  kill(): void {
    this.gf.kill();
  }
}
