import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Measurement {
  name: string;
  wallMs: number;
  userMs: number;
  sysMs: number;
  peakRssKiB: number;
  exitCode: number;
  stdout: string;
  stderr: string;
  /** fsync + fdatasync calls of the process and its threads and children (with `fsyncs: true`). */
  fsyncs?: number;
}

export interface MeasureOptions {
  /**
   * Count fsync and fdatasync calls with `strace -f -c --seccomp-bpf` (only those two system calls
   * stop the tracee, so the overhead is one ptrace stop per call). Ignored when strace is missing.
   */
  fsyncs?: boolean;
}

export const hasStrace = (): boolean => existsSync('/usr/bin/strace');

/** The calls of fsync and fdatasync in an `strace -c` summary. */
export function fsyncCalls(summary: string): number {
  let n = 0;
  for (const line of summary.split('\n')) {
    const f = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (f.length >= 5 && (f.at(-1) === 'fsync' || f.at(-1) === 'fdatasync')) n += Number(f[3]);
  }
  return n;
}

/** Runs a command under /usr/bin/time -v and returns wall time and peak RSS. */
export async function measure(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
  opts: MeasureOptions = {},
): Promise<Measurement> {
  if (!existsSync('/usr/bin/time')) throw new Error('/usr/bin/time is missing: apt-get install time');
  const traceDir = opts.fsyncs && hasStrace() ? mkdtempSync(join(tmpdir(), 'bench-strace-')) : undefined;
  const traceFile = traceDir ? join(traceDir, 'summary') : '';
  const argv = traceDir
    ? ['strace', '-f', '-c', '--seccomp-bpf', '-e', 'trace=fsync,fdatasync', '-o', traceFile, cmd, ...args]
    : [cmd, ...args];
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn('/usr/bin/time', ['-v', ...argv], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', reject);
    p.on('close', (code) => {
      const wallMs = Number(process.hrtime.bigint() - start) / 1e6;
      const num = (re: RegExp): number => Number(re.exec(err)?.[1] ?? 'NaN');
      const m: Measurement = {
        name,
        wallMs,
        userMs: num(/User time \(seconds\): ([\d.]+)/) * 1000,
        sysMs: num(/System time \(seconds\): ([\d.]+)/) * 1000,
        peakRssKiB: num(/Maximum resident set size \(kbytes\): (\d+)/),
        exitCode: code ?? -1,
        stdout: out,
        stderr: err,
      };
      if (traceDir) {
        m.fsyncs = existsSync(traceFile) ? fsyncCalls(readFileSync(traceFile, 'utf8')) : NaN;
        rmSync(traceDir, { recursive: true, force: true });
      }
      if (code !== 0) reject(new Error(`${name}: ${cmd} exited ${code}\n${err.slice(-2000)}`));
      else resolve(m);
    });
  });
}

export function mbps(bytes: number, ms: number): string {
  return (bytes / 1e6 / (ms / 1000)).toFixed(0);
}

/** A run's report: `say` prints a line and keeps it, `lines` is what was said (for bench/results). */
export function reporter(): { say: (line: string) => void; lines: string[] } {
  const lines: string[] = [];
  return {
    lines,
    say: (line) => {
      console.log(line);
      lines.push(line);
    },
  };
}

/** Table cells of a measurement: wall seconds, peak RSS, a byte count, a rate, a target's verdict. */
export const secs = (m: Measurement): string => `${(m.wallMs / 1000).toFixed(2)} s`;
export const rss = (m: Measurement): string => `${(m.peakRssKiB / 1024).toFixed(0)} MiB`;
export const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;
export const rate = (bytes: number, m: Measurement): string => `${mbps(bytes, m.wallMs)} MB/s`;
export const pass = (ok: boolean): string => (ok ? '**PASS**' : '**FAIL**');

export function row(m: Measurement, bytes: number, extra = ''): string {
  return `| ${m.name} | ${(m.wallMs / 1000).toFixed(2)} s | ${mbps(bytes, m.wallMs)} MB/s | ${(m.peakRssKiB / 1024).toFixed(0)} MiB | ${extra} |`;
}

export async function sh(script: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn('bash', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`bash exited ${code}: ${script.slice(0, 200)}`)),
    );
  });
}

/** Objects (files) and their bytes in a local repository, leaving out `tmp/` and `locks/`. */
export async function repoUsage(dir: string): Promise<{ objects: number; bytes: number }> {
  const sizes = (
    await sh(
      `find '${dir}' \\( -path '${dir}/tmp' -o -path '${dir}/locks' \\) -prune -o -type f -printf '%s\\n'`,
    )
  )
    .split('\n')
    .filter(Boolean)
    .map(Number);
  return { objects: sizes.length, bytes: sizes.reduce((a, b) => a + b, 0) };
}

/** Whether `bin COMMAND --help` lists OPTION (for options only some builds have). */
export async function hasOption(bin: string, command: string, option: string): Promise<boolean> {
  const help = await sh(`'${bin}' ${command} --help 2>&1 || true`);
  return new RegExp(`(^|[\\s,])${option.replace(/[-]/g, '\\-')}([\\s=<]|$)`, 'm').test(help);
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length === 0 ? NaN : s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}
