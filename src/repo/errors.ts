import { ExitCode, VmvaultError, printable } from '../util/index.js';

export type BackendErrorKind =
  | 'not-found'
  | 'exists'
  | 'permission'
  | 'no-space'
  | 'transient'
  | 'range'
  /** Something other than a regular file (a directory, a socket) where an object's file belongs. */
  | 'not-a-file'
  | 'other';

/** A storage backend failure. Only backend modules create these; errno / S3 details go in `cause`. */
export class BackendError extends VmvaultError {
  constructor(
    readonly kind: BackendErrorKind,
    message: string,
    opts: { cause?: unknown; hint?: string; retryable?: boolean } = {},
  ) {
    super(`BACKEND_${kind.toUpperCase().replaceAll('-', '_')}`, message, {
      cause: opts.cause,
      hint: opts.hint ?? defaultHint(kind),
      // The repository holds something no vmvault wrote: damage, as check reports it.
      ...(kind === 'not-a-file' ? { exitCode: ExitCode.INTEGRITY } : {}),
    });
    this.retryable = opts.retryable ?? kind === 'transient';
  }
  readonly retryable: boolean;

  /** What crosses from a worker thread (its stack's error) for `fromWire` to rebuild. */
  wire(): { kind: BackendErrorKind; retryable: boolean } {
    return { kind: this.kind, retryable: this.retryable };
  }

  /**
   * The error a worker thread's stack threw, rebuilt from what crossed (`wire()` as details, the
   * message and hint): undefined when `details` hold no backend error kind.
   */
  static fromWire(
    message: string,
    hint: string | undefined,
    details: Record<string, unknown>,
  ): BackendError | undefined {
    const kind = details.kind;
    if (typeof kind !== 'string' || !BACKEND_ERROR_KINDS.has(kind as BackendErrorKind)) return undefined;
    return new BackendError(kind as BackendErrorKind, message, {
      ...(hint === undefined ? {} : { hint }),
      retryable: details.retryable === true,
    });
  }
}

const BACKEND_ERROR_KINDS: ReadonlySet<BackendErrorKind> = new Set<BackendErrorKind>([
  'not-found',
  'exists',
  'permission',
  'no-space',
  'transient',
  'range',
  'not-a-file',
  'other',
]);

function defaultHint(kind: BackendErrorKind): string | undefined {
  switch (kind) {
    case 'no-space':
      return 'free space on the repository storage and run the command again (no snapshot was written; objects already stored stay unreferenced, and the next backup of the same data reuses them)';
    case 'not-a-file':
      return 'move it out of the repository (vmvault never creates one there); the next backup of the same data stores the object again';
    case 'permission':
      return 'check the permissions of the repository directory';
    default:
      return undefined;
  }
}

export function isNotFound(err: unknown): boolean {
  return err instanceof BackendError && err.kind === 'not-found';
}

export class RepoNotFoundError extends VmvaultError {
  constructor(location: string, cause?: unknown, why?: string) {
    super('REPO_NOT_FOUND', `no vmvault repository at ${location}${why === undefined ? '' : `: ${why}`}`, {
      hint: `create one with 'vmvault init ${location}' or pass the right --repo`,
      exitCode: ExitCode.REPO_NOT_FOUND,
      cause,
    });
  }
}

export class RepoExistsError extends VmvaultError {
  constructor(location: string) {
    super('REPO_EXISTS', `a repository already exists at ${location}`, {
      hint: 'use it as it is, or choose another location',
    });
  }
}

/** `init` on a directory that holds something other than a repository. */
export class RepoNotEmptyError extends VmvaultError {
  constructor(location: string, entry: string) {
    super(
      'REPO_NOT_EMPTY',
      `${location} is not empty (it holds ${printable(entry)}) and is not a vmvault repository`,
      {
        hint: 'choose an empty or new directory for the repository',
      },
    );
  }
}

/** A location with repository objects (data/, index/, snapshots/, ...) but no `config`. */
export class RepoConfigMissingError extends VmvaultError {
  constructor(location: string, entry: string) {
    const top = `${printable(entry.split('/')[0] ?? entry)}/`;
    super(
      'REPO_CONFIG_MISSING',
      `${location} is a damaged repository: its config is missing (it has ${top})`,
      {
        hint: "put its 'config' back from a copy of the repository, or choose an empty or new directory for a new one",
        exitCode: ExitCode.INTEGRITY,
        details: { entry },
      },
    );
  }
}

/** A config, index or manifest this version cannot read (not a repository, an unknown version). */
export class RepoFormatError extends VmvaultError {
  constructor(message: string, hint?: string, opts: { code?: string; exitCode?: number } = {}) {
    super(opts.code ?? 'REPO_FORMAT', message, {
      hint: hint ?? 'this repository was written by another vmvault version or is damaged',
      ...(opts.exitCode !== undefined ? { exitCode: opts.exitCode } : {}),
    });
  }
}

const DAMAGED_OBJECT_HINT =
  "a backup of the same data stores it again; 'vmvault check --read-data' lists every damaged object";

/**
 * A disk index or snapshot manifest that is missing or damaged (its bytes do not decode, do not
 * match its id, or hold impossible values): an integrity problem (exit code INTEGRITY, like a
 * damaged chunk). Still a RepoFormatError for callers that catch those.
 */
export class RepoDamagedError extends RepoFormatError {
  constructor(message: string, hint?: string) {
    super(message, hint ?? DAMAGED_OBJECT_HINT, { code: 'REPO_DAMAGED', exitCode: ExitCode.INTEGRITY });
  }
}

export class SnapshotNotFoundError extends VmvaultError {
  constructor(ref: string, hint?: string) {
    super('SNAPSHOT_NOT_FOUND', `no snapshot matches '${ref}'`, {
      hint: hint ?? "list snapshots with 'vmvault snapshots'",
    });
  }
}

export class AmbiguousSnapshotError extends VmvaultError {
  constructor(ref: string, count: number) {
    super('SNAPSHOT_AMBIGUOUS', `'${ref}' matches ${count} snapshots`, {
      hint: 'give more characters of the id',
    });
  }
}

export interface ChunkLocation {
  snapshot?: string | undefined;
  disk?: string | undefined;
  offset?: number | undefined;
}

function where(loc: ChunkLocation): string {
  const parts: string[] = [];
  if (loc.snapshot) parts.push(`snapshot ${loc.snapshot.slice(0, 8)}`);
  if (loc.disk) parts.push(`disk ${printable(loc.disk, 40)}`);
  if (loc.offset !== undefined) parts.push(`offset ${loc.offset}`);
  return parts.length ? ` (${parts.join(', ')})` : '';
}

/** A chunk id as messages show it: the first 12 hex digits (the full id is in the error's details). */
export function shortChunkId(id: string): string {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

/** A blob whose bytes do not match its id or its integrity tag. */
export class ChunkCorruptError extends VmvaultError {
  constructor(
    readonly chunkId: string,
    readonly reason: string,
    readonly location: ChunkLocation = {},
  ) {
    // Messages name chunks by a short id (one line stays readable); `details` has the full one.
    super('CHUNK_CORRUPT', `chunk ${shortChunkId(chunkId)} is corrupt${where(location)}: ${reason}`, {
      hint: "run 'vmvault check --read-data --repair' to set damaged chunks aside, then a full backup of the same data stores them again",
      exitCode: ExitCode.INTEGRITY,
      details: { chunkId, ...location },
    });
  }
  withLocation(loc: ChunkLocation): ChunkCorruptError {
    return new ChunkCorruptError(this.chunkId, this.reason, loc);
  }
}

/** A blob referenced by an index but absent from storage. */
export class ChunkMissingError extends VmvaultError {
  constructor(
    readonly chunkId: string,
    readonly location: ChunkLocation = {},
  ) {
    super('CHUNK_MISSING', `chunk ${shortChunkId(chunkId)} is missing${where(location)}`, {
      hint: "run 'vmvault check' to find every missing chunk; a full backup of the same data (backup -l full, backup-image) stores it again",
      exitCode: ExitCode.INTEGRITY,
      details: { chunkId, ...location },
    });
  }
}

/** `vmvault check` found missing or damaged objects (exit code INTEGRITY, like a damaged chunk). */
export class CheckFailedError extends VmvaultError {
  constructor(message: string, hint: string, details: Record<string, unknown> = {}) {
    super('CHECK_FAILED', message, { hint, exitCode: ExitCode.INTEGRITY, details });
  }
}
