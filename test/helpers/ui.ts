import { request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { request as httpsRequest } from 'node:https';
import type { ChildProcess } from 'node:child_process';
import { startCli } from './cli.js';

export interface Answer {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

/** One request through node:http(s) (a Host header of our choice, unlike fetch). */
export function httpGet(
  url: string,
  opts: { method?: string; headers?: Record<string, string>; ca?: Buffer } = {},
): Promise<Answer> {
  const u = new URL(url);
  const req = u.protocol === 'https:' ? httpsRequest : httpRequest;
  return new Promise((resolve, reject) => {
    const r = req(
      u,
      {
        method: opts.method ?? 'GET',
        headers: opts.headers ?? {},
        agent: false,
        ...(opts.ca ? { ca: opts.ca } : {}),
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
        res.on('error', reject);
      },
    );
    r.on('error', reject);
    r.end();
  });
}

/** A running `vmvault ui`: its base URL (from stderr) and `stop`, resolving with its exit code. */
export interface RunningUi {
  child: ChildProcess;
  url: string;
  stderr: () => string;
  stop: (sig?: NodeJS.Signals) => Promise<number>;
}

export async function startUi(args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunningUi> {
  const child = startCli(['ui', ...args], env);
  let err = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr?.on('data', (d: Buffer) => {
      err += d.toString();
      const m = /at (https?:\/\/\S+\/)\n/.exec(err);
      if (m && err.includes('press Ctrl-C')) resolve(m[1]!);
    });
    child.on('close', (code) => reject(new Error(`ui exited ${code}: ${err}`)));
  });
  child.removeAllListeners('close');
  const stop = (sig: NodeJS.Signals = 'SIGINT'): Promise<number> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode ?? -1);
      child.on('close', (code) => resolve(code ?? -1));
      child.kill(sig);
    });
  return { child, url, stderr: () => err, stop };
}
