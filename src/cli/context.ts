import { Option, type Command } from 'commander';
import { printable, stderrLogger, UsageError, type Logger } from '../util/index.js';
import { resolve } from 'node:path';
import {
  backendSpecFor,
  dirKekCache,
  openBackend,
  Repository,
  s3RequestCounts,
  type Backend,
  type KekCache,
  type SnapshotDamagedError,
} from '../repo/index.js';
import { readPassword } from './password.js';
import { logLine, recordSummary } from './events.js';

export interface GlobalOptions {
  debug?: boolean;
  quiet?: boolean;
  /** The password of an encrypted repository, from this file's first line. */
  passwordFile?: string;
  s3Connections?: number;
  limitUpload?: number;
  limitDownload?: number;
  /** Reports on the run (after-run.ts, docs/cli.md "Logs, notifications and metrics"). */
  logFile?: string;
  jsonProgress?: boolean;
  notifyCommand?: string;
  notifyTimeout?: number;
  metricsFile?: string;
}

/** Test-only (docs/cli.md): scrypt N of new key slots, e.g. 16384, so that CLI tests run fast. */
export function testKdf(): { N: number; r: number; p: number } | undefined {
  const n = Number(process.env.VMVAULT_TEST_KDF_N);
  return Number.isSafeInteger(n) && n > 0 ? { N: n, r: 8, p: 1 } : undefined;
}

/** The `-r, --repo` option every command but init takes (also from VMVAULT_REPO). */
export function repoOption(): Option {
  return new Option(
    '-r, --repo <repo>',
    'repository location: a directory, s3:https://HOST/BUCKET[/PREFIX] or s3://BUCKET[/PREFIX]',
  ).env('VMVAULT_REPO');
}

/**
 * Parser of a repeatable option that also takes comma-separated values (`--tag a --tag b,c`):
 * a variadic option would swallow the arguments that follow it.
 */
export const commaList = (v: string, prev: string[] = []): string[] => [
  ...prev,
  ...v.split(',').filter(Boolean),
];

export function globals(cmd: Command): GlobalOptions {
  return cmd.optsWithGlobals<GlobalOptions>();
}

/**
 * The command's logger: stderr (info silenced by --quiet, and by --json: stdout is the summary),
 * and every info and warning line also into the --log-file.
 */
export function loggerFor(cmd: Command): Logger {
  const g = globals(cmd);
  const json = cmd.opts<{ json?: boolean }>().json === true;
  const out = stderrLogger({ debug: g.debug ?? false, quiet: (g.quiet ?? false) || json });
  return {
    debug: out.debug,
    info: (m) => {
      logLine(m);
      out.info(m);
    },
    warn: (m) => {
      logLine(`warning: ${m}`);
      out.warn(m);
    },
  };
}

/** A warning line on stderr and in the --log-file. */
export function warnLine(m: string): void {
  logLine(`warning: ${m}`);
  process.stderr.write(`warning: ${printable(m, 400)}\n`);
}

/** How a command uses the repository: `read` commands open it through the read-only wrapper. */
export type RepoAccess = 'read' | 'write';

/**
 * Opens the repository. Commands that only read it (`access: 'read'`) get a read-only storage
 * stack, so no code path of theirs, in any thread, can change the repository.
 */
/** `VMVAULT_KEY_CACHE=DIR`: unlocked key slots kept between commands (docs/cli.md "Passwords"). */
function keyCacheOption(): { kekCache?: KekCache } {
  const dir = process.env.VMVAULT_KEY_CACHE;
  if (dir === undefined || dir === '') return {};
  return {
    kekCache: dirKekCache(resolve(dir), (m) => warnLine(m)),
  };
}

export async function openRepo(
  opts: { repo?: string; passwordFile?: string; password?: () => Promise<string> },
  access: RepoAccess = 'write',
): Promise<Repository> {
  if (!opts.repo) throw new UsageError('no repository given', 'pass -r REPO or set VMVAULT_REPO');
  const backend = openBackendFor(opts.repo, access);
  const repo = await Repository.open(
    opts.repo,
    {
      onDamagedSnapshot: warnDamagedSnapshot,
      password:
        opts.password ?? (() => readPassword({ passwordFile: opts.passwordFile ?? globalPasswordFile() })),
      onDamagedKeySlot: (d) => warnLine(`key slot ${d.name} is damaged (skipped): ${d.reason}`),
      ...keyCacheOption(),
    },
    backend,
  );
  // Writers hold a session (a lease: docs/gc.md) while the repository is open; so do readers
  // that need what they read to stay (restore, serve, check), through a writable stack of their
  // own for that one object, when the storage lets them write it (read-only media: none).
  if (access === 'write') {
    try {
      await repo.startSession(commandName, testSessionTiming());
    } catch (err) {
      await repo.close().catch(() => undefined);
      throw err;
    }
  } else if (READERS_WITH_SESSIONS.has(commandName)) {
    await repo
      .startSession(commandName, undefined, openBackendFor(opts.repo, 'write'))
      .catch(() => undefined);
  }
  return repo;
}

/** The global S3 options (`--s3-connections`, `--limit-upload`, `--limit-download`), set by main.ts. */
export interface S3GlobalOptions {
  s3Connections?: number;
  limitUploadKiBs?: number;
  limitDownloadKiBs?: number;
}
let s3Globals: S3GlobalOptions = {};
export function setGlobalS3Options(o: S3GlobalOptions): void {
  s3Globals = o;
}

/** The storage stack of a location as the command line describes it (global S3 options applied). */
export function openBackendFor(location: string, access: RepoAccess = 'write'): Backend {
  const g = s3Globals;
  const spec = backendSpecFor(location, {
    ...(g.s3Connections === undefined ? {} : { connections: g.s3Connections }),
    ...(g.limitUploadKiBs === undefined ? {} : { limitUploadBytesPerSec: g.limitUploadKiBs * 1024 }),
    ...(g.limitDownloadKiBs === undefined ? {} : { limitDownloadBytesPerSec: g.limitDownloadKiBs * 1024 }),
  });
  return openBackend({ ...spec, readOnly: access === 'read' });
}

/** Parser of a positive integer option (`--s3-connections 32`, `--limit-upload 10240`). */
export function positiveInt(name: string, max: number): (v: string) => number {
  return (v: string): number => {
    const n = Number(v);
    if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1 || n > max)
      throw new UsageError(
        `${name} must be a whole number from 1 to ${max}, not '${printable(v, 40)}'`,
        `run 'vmvault --help'`,
      );
    return n;
  };
}

/**
 * Test-only (docs/cli.md): `VMVAULT_TEST_SESSION_MS=HEARTBEAT,FENCE` shortens the session's
 * heartbeat and fence times (ms), so that a test can stop a writer past its lease in seconds.
 */
function testSessionTiming(): { heartbeatMs: number; fenceMs: number } | undefined {
  const m = /^(\d+),(\d+)(?:,\d+)?$/.exec(process.env.VMVAULT_TEST_SESSION_MS ?? '');
  return m ? { heartbeatMs: Number(m[1]), fenceMs: Number(m[2]) } : undefined;
}

/** Test-only: the third field of `VMVAULT_TEST_SESSION_MS` (ms after which prune counts a silent session gone). */
export function testSessionTtlMs(): number | undefined {
  const m = /^\d+,\d+,(\d+)$/.exec(process.env.VMVAULT_TEST_SESSION_MS ?? '');
  return m ? Number(m[1]) : undefined;
}

/** Reading commands that hold a session (docs/gc.md: what they read must not be collected meanwhile). */
const READERS_WITH_SESSIONS = new Set(['restore', 'serve', 'files', 'mount', 'check', 'sync']);

/** The running command's name (`backup`, `forget`, …), set by main.ts: what a session records. */
let commandName = 'vmvault';
export function setCommandName(name: string): void {
  commandName = name;
}

/** The global `--password-file` (given before the command), set by main.ts before each action. */
let globalPasswordFileValue: string | undefined;
export function setGlobalPasswordFile(file: string | undefined): void {
  globalPasswordFileValue = file;
}
function globalPasswordFile(): string | undefined {
  return globalPasswordFileValue;
}

/**
 * A damaged manifest that a listing skipped: one warning line on stderr (the command goes on).
 * The error's message names the snapshot by short id, its hint how to remove it.
 */
export function warnDamagedSnapshot(err: SnapshotDamagedError): void {
  warnLine(`${err.message} (skipped); ${err.hint ?? ''}`);
}

/** Runs `fn` with an open repository and always closes it. */
export async function withRepo<T>(
  opts: { repo?: string; passwordFile?: string },
  fn: (repo: Repository) => Promise<T>,
  access: RepoAccess = 'write',
): Promise<T> {
  const repo = await openRepo(opts, access);
  try {
    return await fn(repo);
  } finally {
    await repo.close();
  }
}

/**
 * Prints a command's JSON output. A process that spoke S3 adds `s3`: the requests by kind and the
 * bytes moved (every thread's, docs/cli.md), to an object output; an array output (a listing)
 * stays an array, and the counts go to stderr as one line `{"message_type":"summary","s3":…}`.
 */
export function printJson(value: unknown): void {
  const { out, spoke, s3 } = withS3Counts(value);
  const isObject = typeof value === 'object' && value !== null && !Array.isArray(value);
  recordSummary(out);
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  if (spoke && !isObject) process.stderr.write(`${JSON.stringify({ message_type: 'summary', s3 })}\n`);
}

/**
 * A command's JSON summary when --json was not given: kept (not printed) for --notify-command,
 * --metrics-file and --log-file, the same object --json would print.
 */
export function keepSummary(value: unknown): void {
  recordSummary(withS3Counts(value).out);
}

function withS3Counts(value: unknown): { out: unknown; spoke: boolean; s3: Record<string, unknown> } {
  const c = s3RequestCounts();
  const spoke = c.PUT + c.GET + c.HEAD + c.LIST + c.DELETE > 0;
  const s3 = {
    requests: { PUT: c.PUT, GET: c.GET, HEAD: c.HEAD, LIST: c.LIST, DELETE: c.DELETE },
    bytesUp: c.bytesUp,
    bytesDown: c.bytesDown,
  };
  const isObject = typeof value === 'object' && value !== null && !Array.isArray(value);
  return { out: spoke && isObject ? { ...value, s3 } : value, spoke, s3 };
}
