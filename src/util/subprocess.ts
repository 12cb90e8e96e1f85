import { spawn, type SpawnOptions } from 'node:child_process';
import { VmvaultError } from './errors.js';

export class ExecError extends VmvaultError {
  constructor(
    readonly command: string,
    readonly exitStatus: number | null,
    readonly stderrTail: string,
    cause?: unknown,
  ) {
    const tail = stderrTail.trim().split('\n').slice(-1)[0] ?? '';
    super(
      'EXEC_FAILED',
      `${command} failed${exitStatus === null ? '' : ` (exit ${exitStatus})`}${tail ? `: ${tail}` : ''}`,
      {
        cause,
      },
    );
  }
}

export interface ExecResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs a command to completion; throws ExecError on a non-zero exit unless `allowFailure`. */
export function exec(
  cmd: string,
  args: readonly string[],
  opts: SpawnOptions & { input?: string | Buffer; allowFailure?: boolean; signal?: AbortSignal } = {},
): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout?.on('data', (d: Buffer) => out.push(d));
    child.stderr?.on('data', (d: Buffer) => err.push(d));
    child.on('error', (e) => reject(new ExecError(cmd, null, e.message, e)));
    child.on('close', (code) => {
      const res = {
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        code: code ?? -1,
      };
      if (res.code !== 0 && !opts.allowFailure)
        reject(new ExecError([cmd, ...args].join(' ').slice(0, 200), code, res.stderr));
      else resolve(res);
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}
