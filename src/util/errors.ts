/**
 * The error model of vmvault. Every error a user can cause or meet is a VmvaultError with a stable
 * upper-snake `code`, the process `exitCode` the CLI uses for it, and an optional `hint` (the fix).
 * Libraries throw these; only src/cli/main.ts prints them (one line) and exits.
 */

/** Exit codes: a published contract (docs/cli.md). New codes are only ever added, never reused. */
export const ExitCode = {
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  PARTIAL: 3,
  REPO_NOT_FOUND: 10,
  REPO_LOCKED: 11,
  WRONG_KEY: 12,
  INTEGRITY: 20,
  SIGINT: 130,
  SIGTERM: 143,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

export interface VmvaultErrorOptions {
  hint?: string | undefined;
  cause?: unknown;
  exitCode?: number;
  details?: Record<string, unknown>;
}

export class VmvaultError extends Error {
  readonly code: string;
  readonly exitCode: number;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, options: VmvaultErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.exitCode = options.exitCode ?? ExitCode.FAILURE;
    this.hint = options.hint;
    this.details = options.details ?? {};
  }

  /** `cause; hint` as the CLI prints it after `vmvault: `. */
  oneLine(): string {
    return this.hint ? `${this.message}; ${this.hint}` : this.message;
  }
}

export function isVmvaultError(err: unknown): err is VmvaultError {
  return err instanceof VmvaultError;
}

/** Bad flags or arguments (exit 2). */
export class UsageError extends VmvaultError {
  constructor(message: string, hint?: string) {
    super('USAGE', message, { hint, exitCode: ExitCode.USAGE });
  }
}

/** SIGINT / SIGTERM through the root AbortSignal. */
export class CancelledError extends VmvaultError {
  constructor(signalName: 'SIGINT' | 'SIGTERM' | 'abort' = 'abort') {
    super('CANCELLED', `cancelled${signalName === 'abort' ? '' : ` by ${signalName}`}`, {
      exitCode: signalName === 'SIGTERM' ? ExitCode.SIGTERM : ExitCode.SIGINT,
    });
  }
}

/** Node errno errors (ENOENT, ENOSPC, ...) carry a string `code`. */
export function errnoCode(err: unknown): string | undefined {
  if (typeof err === 'object' && err !== null && 'code' in err) {
    const code = (err as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}

export function errorMessage(err: unknown): string {
  if (err instanceof Error) return err.message;
  return String(err);
}

/** Throws a CancelledError when the signal is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    const reason: unknown = signal.reason;
    if (reason instanceof VmvaultError) throw reason;
    throw new CancelledError();
  }
}
