import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { VmvaultError, printable } from '../../util/index.js';

/**
 * Extraction of a directory tree from a tar stream (libguestfs `tar-out`, GNU tar in the
 * appliance) into a new directory, written by this code rather than by a host tar: every name
 * comes from a guest filesystem and is hostile. An entry is created only as a new name (O_EXCL,
 * mkdir, symlink: none replaces or follows what is there) inside a directory this extraction made,
 * so nothing is ever written outside `dest` or through a symlink; `..` and empty components are
 * refused, symlinks are recreated with their target as text and never followed, set-id bits are
 * dropped, devices, fifos and sockets are skipped, owners are not restored.
 */

export interface ExtractResult {
  files: number;
  dirs: number;
  symlinks: number;
  hardlinks: number;
  bytes: number;
  /** Entries left out, with why (printable). */
  skipped: string[];
}

/** Longest GNU long name / pax header this reader accepts. */
const MAX_META_BYTES = 1024 * 1024;
const BLOCK = 512;

export class TarFormatError extends VmvaultError {
  constructor(message: string) {
    super('TAR_FORMAT', `the tar stream from the appliance is damaged: ${message}`);
  }
}

/** Exact-length reads over an async stream of buffers. */
class Pull {
  private chunks: Buffer[] = [];
  private have = 0;
  private done = false;
  constructor(private readonly it: AsyncIterator<Buffer>) {}

  private async fill(n: number): Promise<boolean> {
    while (this.have < n && !this.done) {
      const r = await this.it.next();
      if (r.done) this.done = true;
      else if (r.value.length > 0) {
        this.chunks.push(r.value);
        this.have += r.value.length;
      }
    }
    return this.have >= n;
  }

  /** Up to `max` bytes (at least 1 unless the stream ended). */
  private async some(max: number): Promise<Buffer | undefined> {
    if (!(await this.fill(1))) return undefined;
    const first = this.chunks[0]!;
    if (first.length <= max) {
      this.chunks.shift();
      this.have -= first.length;
      return first;
    }
    this.chunks[0] = first.subarray(max);
    this.have -= max;
    return first.subarray(0, max);
  }

  async exact(n: number): Promise<Buffer | undefined> {
    if (!(await this.fill(n))) return undefined;
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    this.chunks = all.length > n ? [all.subarray(n)] : [];
    this.have -= n;
    return all.subarray(0, n);
  }

  /** `n` bytes in pieces, to `sink` (or dropped), then the padding to the next block. */
  async data(n: number, sink?: (b: Buffer) => Promise<void>): Promise<void> {
    for (let left = n; left > 0;) {
      const b = await this.some(left);
      if (!b) throw new TarFormatError('it ends inside an entry');
      left -= b.length;
      if (sink) await sink(b);
    }
    const pad = (BLOCK - (n % BLOCK)) % BLOCK;
    if (pad && !(await this.exact(pad))) throw new TarFormatError('it ends inside an entry');
  }
}

function cstr(b: Buffer, at: number, len: number): string {
  const s = b.subarray(at, at + len);
  const z = s.indexOf(0);
  return (z < 0 ? s : s.subarray(0, z)).toString('utf8');
}

/** A numeric field: octal text, or GNU base-256 (high bit of the first byte set). */
function num(b: Buffer, at: number, len: number): number {
  const f = b.subarray(at, at + len);
  if (f[0]! & 0x80) {
    let n = f[0]! & 0x7f;
    for (let i = 1; i < f.length; i++) n = n * 256 + f[i]!;
    if (!Number.isSafeInteger(n)) throw new TarFormatError('a number is out of range');
    return n;
  }
  const t = f
    .toString('latin1')
    .replace(/[\0 ]+$/, '')
    .replace(/^ +/, '');
  if (t === '') return 0;
  if (!/^[0-7]+$/.test(t)) throw new TarFormatError(`bad number '${printable(t, 20)}'`);
  return parseInt(t, 8);
}

function checksumOk(h: Buffer): boolean {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
  return sum === num(h, 148, 8);
}

/** pax records `LEN key=value\n`. */
function parsePax(b: Buffer): Map<string, string> {
  const out = new Map<string, string>();
  let at = 0;
  while (at < b.length) {
    const sp = b.indexOf(0x20, at);
    if (sp < 0) break;
    const len = Number(b.subarray(at, sp).toString('latin1'));
    if (!Number.isSafeInteger(len) || len <= sp - at || at + len > b.length) break;
    const rec = b.subarray(sp + 1, at + len - 1).toString('utf8');
    const eq = rec.indexOf('=');
    if (eq > 0) out.set(rec.slice(0, eq), rec.slice(eq + 1));
    at += len;
  }
  return out;
}

/** The components of an entry name, or undefined when it is not a plain relative path. */
function components(name: string): string[] | undefined {
  if (name.includes('\0')) return undefined;
  const parts = name.split('/').filter((c) => c !== '' && c !== '.');
  if (parts.some((c) => c === '..')) return undefined;
  return parts;
}

interface DirTimes {
  path: string;
  mode: number;
  mtime: number;
  depth: number;
}

/**
 * Extracts the tar stream into `dest`, a directory the caller just created (empty, private).
 * The tar's root entry (`./`) gives `dest` its mode and time.
 */
export async function extractTar(source: AsyncIterable<Buffer>, dest: string): Promise<ExtractResult> {
  const pull = new Pull(source[Symbol.asyncIterator]());
  const res: ExtractResult = { files: 0, dirs: 0, symlinks: 0, hardlinks: 0, bytes: 0, skipped: [] };
  /** Directories this extraction made (relative paths; '' is dest). */
  const madeDirs = new Set<string>(['']);
  const madeFiles = new Set<string>();
  const dirTimes: DirTimes[] = [];
  const skip = (name: string, why: string): void => {
    if (res.skipped.length < 1000) res.skipped.push(`${printable(name, 200)}: ${why}`);
  };
  let longName: string | undefined;
  let longLink: string | undefined;
  let pax = new Map<string, string>();

  /** Makes the missing parents of `parts` (only below directories made here); false if a parent is not ours. */
  const ensureParents = async (parts: string[]): Promise<boolean> => {
    for (let i = 1; i < parts.length; i++) {
      const rel = parts.slice(0, i).join('/');
      if (madeDirs.has(rel)) continue;
      try {
        await fs.mkdir(join(dest, rel), { mode: 0o700 });
      } catch {
        return false; // a file or symlink of that name exists: never descend into it
      }
      madeDirs.add(rel);
    }
    return true;
  };

  for (;;) {
    const h = await pull.exact(BLOCK);
    if (!h) throw new TarFormatError('it ends without an end-of-archive block');
    if (h.every((b) => b === 0)) break;
    if (!checksumOk(h)) throw new TarFormatError('a header checksum does not match');
    const type = String.fromCharCode(h[156]!);
    const size = num(h, 124, 12);
    if (type === 'L' || type === 'K' || type === 'x' || type === 'g') {
      if (size > MAX_META_BYTES) throw new TarFormatError(`a ${size}-byte name or pax header`);
      const chunks: Buffer[] = [];
      await pull.data(size, async (b) => void chunks.push(Buffer.from(b)));
      const body = Buffer.concat(chunks);
      if (type === 'L') longName = cstr(body, 0, body.length);
      else if (type === 'K') longLink = cstr(body, 0, body.length);
      else if (type === 'x') pax = parsePax(body);
      continue;
    }
    const magic = h.subarray(257, 263).toString('latin1');
    let name = cstr(h, 0, 100);
    if (magic === 'ustar\0') {
      const prefix = cstr(h, 345, 155);
      if (prefix) name = `${prefix}/${name}`;
    }
    name = pax.get('path') ?? longName ?? name;
    const link = pax.get('linkpath') ?? longLink ?? cstr(h, 157, 100);
    const mode = num(h, 100, 8) & 0o777; // set-id and sticky bits dropped
    const mtime = pax.has('mtime') ? Number(pax.get('mtime')) : num(h, 136, 12);
    const dataSize = pax.has('size') ? Number(pax.get('size')) : size;
    longName = longLink = undefined;
    pax = new Map();
    if (!Number.isSafeInteger(dataSize) || dataSize < 0) throw new TarFormatError('a bad entry size');

    const parts = components(name);
    const rel = parts?.join('/');
    if (parts === undefined || rel === undefined) {
      skip(name, 'not a plain relative name');
      await pull.data(dataSize);
      continue;
    }
    if (rel === '') {
      if (type === '5') dirTimes.push({ path: dest, mode, mtime, depth: 0 });
      await pull.data(dataSize);
      continue;
    }
    if (!(await ensureParents(parts))) {
      skip(name, 'its parent is not a directory');
      await pull.data(dataSize);
      continue;
    }
    const path = join(dest, rel);
    try {
      if (type === '0' || type === '\0' || type === '7') {
        const fh = await fs.open(path, 'wx', 0o600).catch(async (err: unknown) => {
          if ((err as { code?: string }).code !== 'EEXIST') throw err;
          skip(name, 'the name is there already');
          await pull.data(dataSize);
          return undefined;
        });
        if (!fh) continue;
        try {
          await pull.data(dataSize, async (b) => {
            await fh.write(b);
          });
          await fh.chmod(mode);
        } finally {
          await fh.close();
        }
        await fs.utimes(path, mtime, mtime);
        madeFiles.add(rel);
        res.files++;
        res.bytes += dataSize;
        continue;
      }
      await pull.data(dataSize);
      if (type === '5') {
        if (!madeDirs.has(rel)) {
          await fs.mkdir(path, { mode: 0o700 });
          madeDirs.add(rel);
        }
        dirTimes.push({ path, mode, mtime, depth: parts.length });
        res.dirs++;
      } else if (type === '2') {
        await fs.symlink(link, path);
        await fs.lutimes(path, mtime, mtime).catch(() => undefined);
        res.symlinks++;
      } else if (type === '1') {
        const target = components(link)?.join('/');
        if (target === undefined || !madeFiles.has(target)) skip(name, 'a hard link to a file not extracted');
        else {
          await fs.link(join(dest, target), path);
          res.hardlinks++;
        }
      } else {
        const kind =
          { '3': 'a character device', '4': 'a block device', '6': 'a fifo' }[type] ?? `type '${type}'`;
        skip(name, `${kind} (not extracted)`);
      }
    } catch (err) {
      if (err instanceof TarFormatError) throw err;
      const code = (err as { code?: string }).code;
      if (code === 'EEXIST') skip(name, 'the name is there already');
      else throw err;
    }
  }
  // Directory modes and times last (deepest first): writing into them changed their times, and a
  // read-only mode would have stopped the extraction.
  for (const d of dirTimes.sort((a, b) => b.depth - a.depth)) {
    await fs.chmod(d.path, d.mode);
    await fs.utimes(d.path, d.mtime, d.mtime);
  }
  return res;
}
