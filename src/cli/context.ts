import { Option, type Command } from 'commander';
import { printable, stderrLogger, UsageError, type Logger } from '../util/index.js';
import { backendSpecFor, openBackend, Repository, type SnapshotDamagedError } from '../repo/index.js';
import { readPassword } from './password.js';

export interface GlobalOptions {
  debug?: boolean;
  quiet?: boolean;
  /** The password of an encrypted repository, from this file's first line. */
  passwordFile?: string;
}

/** Test-only (docs/cli.md): scrypt N of new key slots, e.g. 16384, so that CLI tests run fast. */
export function testKdf(): { N: number; r: number; p: number } | undefined {
  const n = Number(process.env.VMVAULT_TEST_KDF_N);
  return Number.isSafeInteger(n) && n > 0 ? { N: n, r: 8, p: 1 } : undefined;
}

/** The `-r, --repo` option every command but init takes (also from VMVAULT_REPO). */
export function repoOption(): Option {
  return new Option('-r, --repo <repo>', 'repository location (a directory)').env('VMVAULT_REPO');
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

export function loggerFor(cmd: Command): Logger {
  const g = globals(cmd);
  return stderrLogger({ debug: g.debug ?? false, quiet: g.quiet ?? false });
}

/** How a command uses the repository: `read` commands open it through the read-only wrapper. */
export type RepoAccess = 'read' | 'write';

/**
 * Opens the repository. Commands that only read it (`access: 'read'`) get a read-only storage
 * stack, so no code path of theirs, in any thread, can change the repository.
 */
export async function openRepo(
  opts: { repo?: string; passwordFile?: string },
  access: RepoAccess = 'write',
): Promise<Repository> {
  if (!opts.repo) throw new UsageError('no repository given', 'pass -r REPO or set VMVAULT_REPO');
  const backend = openBackend({ ...backendSpecFor(opts.repo), readOnly: access === 'read' });
  return Repository.open(
    opts.repo,
    {
      onDamagedSnapshot: warnDamagedSnapshot,
      password: () => readPassword({ passwordFile: opts.passwordFile ?? globalPasswordFile() }),
      onDamagedKeySlot: (d) =>
        process.stderr.write(
          `warning: ${printable(`key slot ${d.name} is damaged (skipped): ${d.reason}`, 400)}\n`,
        ),
    },
    backend,
  );
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
  process.stderr.write(`warning: ${printable(`${err.message} (skipped); ${err.hint ?? ''}`, 400)}\n`);
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

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}
