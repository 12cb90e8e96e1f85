import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

export interface Measurement {
  name: string;
  wallMs: number;
  userMs: number;
  sysMs: number;
  peakRssKiB: number;
  exitCode: number;
  stdout: string;
  stderr: string;
}

/** Runs a command under /usr/bin/time -v and returns wall time and peak RSS. */
export async function measure(
  name: string,
  cmd: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<Measurement> {
  if (!existsSync('/usr/bin/time')) throw new Error('/usr/bin/time is missing: apt-get install time');
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    const p = spawn('/usr/bin/time', ['-v', cmd, ...args], {
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
      if (code !== 0) reject(new Error(`${name}: ${cmd} exited ${code}\n${err.slice(-2000)}`));
      else resolve(m);
    });
  });
}

export function mbps(bytes: number, ms: number): string {
  return (bytes / 1e6 / (ms / 1000)).toFixed(0);
}

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
