import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const BIN = fileURLToPath(new URL('../../bin/vmvault', import.meta.url));
const DIST = fileURLToPath(new URL('../../dist/cli/main.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function assertBuilt(): void {
  if (!existsSync(DIST))
    throw new Error('dist/ is missing: run `npm run build` (npm test does it) before the CLI tests');
}

/** Runs the compiled CLI as a user would, capturing output and exit code. */
export function runCli(
  args: string[],
  opts: { env?: NodeJS.ProcessEnv; input?: string } = {},
): Promise<CliResult> {
  assertBuilt();
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, VMVAULT_REPO: '', ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    p.stdin.end(opts.input ?? '');
  });
}

/** Starts the CLI without waiting (for kill tests). */
export function startCli(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  assertBuilt();
  return spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, VMVAULT_REPO: '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

/** A running `vmvault serve`: its NBD URIs, and `stop` (SIGINT by default) resolving with its exit code. */
export interface Served {
  child: ChildProcess;
  uris: string[];
  stop: (sig?: NodeJS.Signals) => Promise<number>;
}

/**
 * Starts `vmvault serve` and resolves with its NBD URIs once it listens; rejects if it exits
 * first. `stop` also works when serve has already exited.
 */
export async function startServe(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const child = startCli(['serve', ...args], env);
  let out = '';
  let err = '';
  child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
  const uris = await new Promise<string[]>((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('press Ctrl-C')) resolve([...out.matchAll(/^\s+(nbd\S+)$/gm)].map((m) => m[1]!));
    });
    child.on('close', (code) => reject(new Error(`serve exited ${code}: ${err}`)));
  });
  const stop = (sig: NodeJS.Signals = 'SIGINT'): Promise<number> =>
    new Promise((resolve) => {
      child.removeAllListeners('close');
      if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode ?? -1);
      child.on('close', (code) => resolve(code ?? -1));
      child.kill(sig);
    });
  return { child, uris, stop };
}

/** A one-line error: exactly one non-empty stderr line, prefixed, and no stack trace. */
export function expectOneLineError(r: CliResult): string {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  if (lines.length !== 1 || !lines[0]!.startsWith('vmvault: ') || /\n\s+at /.test(r.stderr)) {
    throw new Error(`expected a one-line error, got:\n${r.stderr}`);
  }
  return lines[0]!;
}

/** The error line of a command that may log progress before failing: the last stderr line, no stack trace. */
export function errorLine(r: CliResult): string {
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  const last = lines[lines.length - 1] ?? '';
  if (!last.startsWith('vmvault: ') || /\n\s+at /.test(r.stderr))
    throw new Error(`expected an error line, got:\n${r.stderr}`);
  return last;
}
