import {
  ExitCode,
  isSafeDiskTarget,
  isSafeFileName,
  isSafeVmName,
  NAME_RULES,
  printable,
  VmvaultError,
} from '../util/index.js';
import { MANIFEST_VERSION, MAX_CHUNK_SIZE, MAX_MANIFEST_BYTES, MIN_CHUNK_SIZE } from './format.js';
import type { DiskStats, SnapshotDisk, SnapshotFile, SnapshotManifest } from './snapshot.js';

/**
 * The schema of a snapshot manifest (docs/format.md, "Snapshot manifest"), checked on every read.
 * A manifest is written by whichever host shares the repository, so nothing in it is trusted:
 * every field is typed, names are restricted to the safe sets of src/util/names.ts, sizes and
 * counts are bounded. `validateManifest` returns a fresh object holding only the known fields.
 */
export const MANIFEST_LIMITS = {
  /** JSON bytes of one manifest (the blob's plaintext). */
  maxManifestBytes: MAX_MANIFEST_BYTES,
  maxDisks: 1024,
  /** 1 PiB: far above any VM disk, far below 2^53. */
  maxDiskBytes: 2 ** 50,
  maxFiles: 256,
  /** Files stored beside the disks (XML, nvram, kernel, initrd). */
  maxFileBytes: 2 ** 30,
  maxTags: 64,
  maxTagLength: 128,
  /** host, program, checkpoint and bitmap names. */
  maxLabelLength: 255,
  /** A disk's source path on the backup host, and the legacy path form of a file name. */
  maxPathLength: 4096,
  /** Characters (code points) of a snapshot's note. */
  maxNoteLength: 4096,
} as const;

export const MANIFEST_MODES = ['full', 'inc', 'diff', 'copy', 'image'] as const;
export const DISK_MODES = ['full', 'incremental'] as const;

const HEX64 = /^[0-9a-f]{64}$/;
const ZERO_ID = '0'.repeat(64);
/** What Date.prototype.toISOString writes, and offsets instead of Z. */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/;
const UUID = /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/;
/** Checkpoint and bitmap names (vmvault writes `vmvault.<repo id>.<time>`). */
const LABEL_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.:+-]*$/;
const FORMAT_NAME = /^[A-Za-z0-9][A-Za-z0-9_.+-]{0,31}$/;
const FILE_KIND = /^[a-z0-9][a-z0-9-]{0,31}$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
/** Half of a UTF-16 surrogate pair on its own (JSON can spell one; it is no character). */
const LONE_SURROGATE = /\p{Cs}/u;
const STAT_FIELDS = [
  'bytesRead',
  'bytesNew',
  'bytesDedup',
  'bytesZero',
  'bytesReused',
  'bytesStored',
  'chunksNew',
] as const satisfies ReadonlyArray<keyof DiskStats>;

/** One field of a manifest that does not satisfy the schema. */
export class ManifestFieldError extends Error {
  constructor(
    /** JSON path of the field, e.g. `disks[0].target`. */
    readonly field: string,
    readonly problem: string,
    /** The manifest declares a version this vmvault does not know (not damage: a newer writer). */
    readonly unsupportedVersion = false,
  ) {
    super(`${field} ${problem}`);
    this.name = 'ManifestFieldError';
  }
}

/**
 * A snapshot manifest that cannot be used: unreadable, not matching its id, or failing the
 * schema. Names the snapshot by its short id (the full id is in `details`) and, for a schema
 * failure, the field. Exit code INTEGRITY, like any damaged object.
 */
export class SnapshotDamagedError extends VmvaultError {
  constructor(
    readonly snapshotId: string,
    /** What is wrong, without the snapshot's name (`integrity tag mismatch`, `disks[0].target …`). */
    readonly reason: string,
    opts: {
      field?: string | undefined;
      vm?: string | null | undefined;
      /** A manifest of a newer vmvault: not damaged, and never moved to quarantine/. */
      unsupportedVersion?: boolean | undefined;
    } = {},
  ) {
    super('SNAPSHOT_DAMAGED', `snapshot ${snapshotId.slice(0, 8)} is damaged: ${reason}`, {
      hint: opts.unsupportedVersion
        ? 'it was written by a newer vmvault: upgrade vmvault to read it'
        : damagedManifestHint(snapshotId),
      exitCode: ExitCode.INTEGRITY,
      details: { snapshot: snapshotId, ...(opts.field !== undefined ? { field: opts.field } : {}) },
    });
    this.field = opts.field;
    this.vm = opts.vm ?? null;
    this.unsupportedVersion = opts.unsupportedVersion ?? false;
  }
  readonly field: string | undefined;
  /** The VM name, when the manifest got as far as naming a valid one. */
  readonly vm: string | null;
  readonly unsupportedVersion: boolean;
}

/** How to get rid of a damaged manifest: by hand, or with check's repair. */
export function damagedManifestHint(snapshotId: string): string {
  return `delete snapshots/${snapshotId.slice(0, 8)}… from the repository, or run 'vmvault check --read-data --repair' to move it to quarantine/`;
}

/** The VM name of a manifest that failed the schema, when it has a valid one (for messages). */
export function vmNameOf(value: unknown): string | null {
  if (!isObject(value) || !isObject(value.vm)) return null;
  const name = value.vm.name;
  return typeof name === 'string' && isSafeVmName(name) ? name : null;
}

/**
 * Checks a parsed manifest against the schema and returns it typed, with only the known fields.
 * `chunkSizeBytes` is the repository's: every disk must use it. Throws ManifestFieldError naming
 * the first field that fails.
 */
export function validateManifest(value: unknown, chunkSizeBytes: number): SnapshotManifest {
  const m = object(value, '(manifest)');
  if (!('version' in m)) throw new ManifestFieldError('version', 'is missing');
  if (m.version !== MANIFEST_VERSION) {
    const v = m.version;
    if (typeof v === 'number' && Number.isSafeInteger(v) && v > MANIFEST_VERSION)
      throw new ManifestFieldError(
        'version',
        `is ${v}, this vmvault reads version ${MANIFEST_VERSION}`,
        true,
      );
    if (v === 1)
      throw new ManifestFieldError(
        'version',
        `is 1, a manifest of repository format 1, which this vmvault no longer reads (it reads version ${MANIFEST_VERSION})`,
      );
    throw new ManifestFieldError('version', `is ${show(v)}, expected ${MANIFEST_VERSION}`);
  }
  const vmIn = object(m.vm, 'vm');
  const name = string(vmIn.name, 'vm.name');
  if (!isSafeVmName(name))
    throw new ManifestFieldError('vm.name', `${show(name)} is refused: ${NAME_RULES.vm}`);
  const vm: SnapshotManifest['vm'] = { name };
  if (vmIn.uuid !== undefined) {
    const uuid = string(vmIn.uuid, 'vm.uuid');
    if (uuid !== '' && !UUID.test(uuid))
      throw new ManifestFieldError('vm.uuid', `${show(uuid)} is not a UUID`);
    vm.uuid = uuid;
  }
  const time = time_(m.time, 'time');
  const host = label(m.host, 'host', /./);
  const tagsIn = array(m.tags, 'tags', MANIFEST_LIMITS.maxTags);
  const tags = tagsIn.map((t, i) => {
    const tag = string(t, `tags[${i}]`);
    if (tag.length === 0 || tag.length > MANIFEST_LIMITS.maxTagLength || CONTROL.test(tag))
      throw new ManifestFieldError(
        `tags[${i}]`,
        `${show(tag)} is refused: a tag is 1 to ${MANIFEST_LIMITS.maxTagLength} printable characters`,
      );
    return tag;
  });
  const parent = m.parent === null ? null : hexId(m.parent, 'parent', 'a snapshot id or null');
  const mode = oneOf(m.mode, 'mode', MANIFEST_MODES);
  const checkpoint = m.checkpoint === null ? null : label(m.checkpoint, 'checkpoint', LABEL_NAME);

  const disksIn = array(m.disks, 'disks', MANIFEST_LIMITS.maxDisks);
  const targets = new Set<string>();
  const disks = disksIn.map((d, i) => disk(d, `disks[${i}]`, chunkSizeBytes, targets));

  const filesIn = array(m.files, 'files', MANIFEST_LIMITS.maxFiles);
  const fileKeys = new Set<string>();
  const files = filesIn.map((f, i) => file(f, `files[${i}]`, chunkSizeBytes, fileKeys));
  const program = label(m.program, 'program', /./);
  const out: SnapshotManifest = {
    version: MANIFEST_VERSION,
    vm: inOrderOf(vmIn, vm),
    time,
    host,
    tags,
    parent,
    mode,
    checkpoint,
    disks,
    files,
    program,
  };
  if (m.origin !== undefined) {
    const o = object(m.origin, 'origin');
    out.origin = inOrderOf(o, {
      repository: hexId(o.repository, 'origin.repository', 'a repository id'),
      snapshot: hexId(o.snapshot, 'origin.snapshot', 'a snapshot id'),
    });
  }
  if (m.protected !== undefined) {
    if (typeof m.protected !== 'boolean')
      throw new ManifestFieldError('protected', `is ${show(m.protected)}, not true or false`);
    out.protected = m.protected;
  }
  if (m.note !== undefined) {
    const note = string(m.note, 'note');
    if ([...note].length > MANIFEST_LIMITS.maxNoteLength || CONTROL.test(note) || LONE_SURROGATE.test(note))
      throw new ManifestFieldError(
        'note',
        `${show(note)} is refused: a note is at most ${MANIFEST_LIMITS.maxNoteLength} printable characters`,
      );
    out.note = note;
  }
  if (m.edited !== undefined) out.edited = time_(m.edited, 'edited');
  return inOrderOf(m, out);
}

/**
 * `out` with its keys in the order `src` has them (keys `src` lacks last), so that a validated
 * manifest serializes to the very bytes it was read from: its id stays its id when written again.
 */
function inOrderOf<T extends object>(src: Record<string, unknown>, out: T): T {
  const o = out as Record<string, unknown>;
  const sorted: Record<string, unknown> = {};
  for (const k of Object.keys(src)) if (k in o) sorted[k] = o[k];
  for (const k of Object.keys(o)) if (!(k in sorted)) sorted[k] = o[k];
  return sorted as T;
}

function disk(value: unknown, at: string, chunkSizeBytes: number, targets: Set<string>): SnapshotDisk {
  const d = object(value, at);
  const target = string(d.target, `${at}.target`);
  if (!isSafeDiskTarget(target))
    throw new ManifestFieldError(`${at}.target`, `${show(target)} is refused: ${NAME_RULES.disk}`);
  if (targets.has(target)) throw new ManifestFieldError(`${at}.target`, `${show(target)} appears twice`);
  targets.add(target);
  const sizeBytes = size(d.sizeBytes, `${at}.sizeBytes`, MANIFEST_LIMITS.maxDiskBytes);
  const cs = size(d.chunkSizeBytes, `${at}.chunkSizeBytes`, MAX_CHUNK_SIZE);
  if (cs < MIN_CHUNK_SIZE || (cs & (cs - 1)) !== 0)
    throw new ManifestFieldError(`${at}.chunkSizeBytes`, `${cs} is not a power of two from 64 KiB to 16 MiB`);
  if (cs !== chunkSizeBytes)
    throw new ManifestFieldError(
      `${at}.chunkSizeBytes`,
      `is ${cs}, the repository's chunk size is ${chunkSizeBytes}`,
    );
  const out: SnapshotDisk = {
    target,
    sizeBytes,
    chunkSizeBytes: cs,
    root: hexId(d.root, `${at}.root`, 'a disk index page id or the zero marker'),
    allocatedBytes: size(d.allocatedBytes, `${at}.allocatedBytes`, sizeBytes),
    stats: diskStats(d.stats, `${at}.stats`),
  };
  if (out.root === ZERO_ID && out.allocatedBytes !== 0)
    throw new ManifestFieldError(
      `${at}.root`,
      `is the zero marker (an all-zero disk), but the disk has ${out.allocatedBytes} allocated bytes`,
    );
  if (d.sourceFormat !== undefined)
    out.sourceFormat = label(d.sourceFormat, `${at}.sourceFormat`, FORMAT_NAME);
  if (d.source !== undefined) {
    const source = string(d.source, `${at}.source`);
    if (source.length > MANIFEST_LIMITS.maxPathLength || source.includes('\0'))
      throw new ManifestFieldError(
        `${at}.source`,
        `is not a path of up to ${MANIFEST_LIMITS.maxPathLength} characters`,
      );
    out.source = source;
  }
  if (d.mode !== undefined) out.mode = oneOf(d.mode, `${at}.mode`, DISK_MODES);
  if (d.checkpointBitmap !== undefined)
    out.checkpointBitmap = label(d.checkpointBitmap, `${at}.checkpointBitmap`, LABEL_NAME);
  return inOrderOf(d, out);
}

function diskStats(value: unknown, at: string): DiskStats {
  const s = object(value, at);
  const out: DiskStats = { ...emptyDiskStatsShape() };
  for (const k of STAT_FIELDS) out[k] = size(s[k], `${at}.${k}`, Number.MAX_SAFE_INTEGER);
  if (s.bytesMeta !== undefined)
    out.bytesMeta = size(s.bytesMeta, `${at}.bytesMeta`, Number.MAX_SAFE_INTEGER);
  return inOrderOf(s, out);
}

function emptyDiskStatsShape(): Record<(typeof STAT_FIELDS)[number], number> {
  return Object.fromEntries(STAT_FIELDS.map((k) => [k, 0])) as Record<(typeof STAT_FIELDS)[number], number>;
}

function file(value: unknown, at: string, chunkSizeBytes: number, seen: Set<string>): SnapshotFile {
  const f = object(value, at);
  const kind = string(f.kind, `${at}.kind`);
  if (!FILE_KIND.test(kind))
    throw new ManifestFieldError(
      `${at}.kind`,
      `${show(kind)} is not a file kind (lowercase letters, digits, -)`,
    );
  const name = string(f.name, `${at}.name`);
  if (!isStoredFileName(kind, name))
    throw new ManifestFieldError(`${at}.name`, `${show(name)} is refused: ${NAME_RULES.file}`);
  const key = `${kind}:${name}`;
  if (seen.has(key)) throw new ManifestFieldError(`${at}.name`, `${show(key)} appears twice`);
  seen.add(key);
  const sizeBytes = size(f.sizeBytes, `${at}.sizeBytes`, MANIFEST_LIMITS.maxFileBytes);
  const expected = Math.ceil(sizeBytes / chunkSizeBytes);
  const chunksIn = array(f.chunks, `${at}.chunks`, expected);
  if (chunksIn.length !== expected)
    throw new ManifestFieldError(
      `${at}.chunks`,
      `lists ${chunksIn.length} chunks for ${sizeBytes} bytes (${expected} expected)`,
    );
  const chunks = chunksIn.map((c, i) => hexId(c, `${at}.chunks[${i}]`, 'a chunk id'));
  return inOrderOf(f, { kind, name, sizeBytes, chunks });
}

/**
 * A file's stored name. Restores write a file under its last path component only, so that
 * component must be a safe file name. Three forms exist: a plain file name (`nvram.fd`); the host
 * path live backups record for the VM's extra files (`/var/lib/libvirt/qemu/nvram/web_VARS.fd`:
 * absolute, no `.` or `..` component, the last one a safe file name), which restores map to the
 * restored copy in the domain XML; and `<VM name>.xml` for the domain and checkpoint XML (never
 * written under that name).
 */
export function isStoredFileName(kind: string, name: string): boolean {
  if (isSafeFileName(name)) return true;
  if (name.length > MANIFEST_LIMITS.maxPathLength || CONTROL.test(name)) return false;
  if (kind === 'domain-xml' || kind === 'checkpoint-xml') return isSafeVmName(name) && name.endsWith('.xml');
  if (!name.startsWith('/')) return false;
  const parts = name.slice(1).split('/');
  return parts.every((p) => p !== '' && p !== '.' && p !== '..') && isSafeFileName(parts[parts.length - 1]!);
}

// ---- typed field readers -----------------------------------------------------------------------

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function show(v: unknown): string {
  if (typeof v === 'string') return `'${printable(v, 48)}'`;
  if (v === undefined) return 'missing';
  const json = JSON.stringify(v) ?? String(v);
  return printable(json, 48);
}

function kindOf(v: unknown): string {
  if (v === undefined) return 'missing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  return typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}

function object(v: unknown, at: string): Record<string, unknown> {
  if (!isObject(v))
    throw new ManifestFieldError(at, v === undefined ? 'is missing' : `is ${kindOf(v)}, not an object`);
  return v;
}

function string(v: unknown, at: string): string {
  if (typeof v !== 'string')
    throw new ManifestFieldError(at, v === undefined ? 'is missing' : `is ${kindOf(v)}, not a string`);
  return v;
}

function array(v: unknown, at: string, max: number): unknown[] {
  if (!Array.isArray(v))
    throw new ManifestFieldError(at, v === undefined ? 'is missing' : `is ${kindOf(v)}, not a list`);
  if (v.length > max) throw new ManifestFieldError(at, `has ${v.length} entries, at most ${max} allowed`);
  return v;
}

/** A byte count or counter: an integer from 0 to `max`. */
function size(v: unknown, at: string, max: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max)
    throw new ManifestFieldError(
      at,
      v === undefined ? 'is missing' : `is ${show(v)}, not an integer from 0 to ${max}`,
    );
  return v;
}

/** A date and time as Date.prototype.toISOString writes it (or with an offset). */
function time_(v: unknown, at: string): string {
  const t = string(v, at);
  if (!ISO_TIME.test(t) || Number.isNaN(Date.parse(t)))
    throw new ManifestFieldError(at, `${show(t)} is not an ISO 8601 date and time`);
  return t;
}

function hexId(v: unknown, at: string, what: string): string {
  if (typeof v !== 'string' || !HEX64.test(v))
    throw new ManifestFieldError(at, `is ${show(v)}, not ${what} (64 lowercase hex characters)`);
  return v;
}

function oneOf<T extends string>(v: unknown, at: string, values: readonly T[]): T {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v))
    throw new ManifestFieldError(at, `is ${show(v)}, not one of ${values.join(', ')}`);
  return v as T;
}

/** A short printable label (host, program, checkpoint and bitmap names). */
function label(v: unknown, at: string, pattern: RegExp): string {
  const s = string(v, at);
  if (s.length === 0 || s.length > MANIFEST_LIMITS.maxLabelLength || CONTROL.test(s) || !pattern.test(s))
    throw new ManifestFieldError(at, `${show(s)} is not a valid name`);
  return s;
}
