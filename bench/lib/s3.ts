/**
 * Benches against the S3 server on loopback (test/helpers/s3-servers.ts): the server's share of
 * the CPU of each measured step, and rclone set up for the same server.
 */
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import type { S3TestServer } from '../../test/helpers/s3-servers.js';
import { measure, sh, type Measurement } from './harness.js';

/** A measured step and the CPU seconds the S3 server spent meanwhile. */
export type ServerMeasurement = Measurement & { serverCpuS: number };

/**
 * Measures steps like `measure` and adds the s3rver child's CPU seconds (utime + stime from
 * /proc) spent during each, to put the server's share beside the client's. Call once the server
 * has started: it finds the newest s3rver child process.
 */
export async function serverTimer(): Promise<
  (...a: Parameters<typeof measure>) => Promise<ServerMeasurement>
> {
  const serverPid = Number((await sh("pgrep -n -f '[s]3rver-child.cjs' || true")).trim());
  const serverCpu = (): number => {
    if (!serverPid) return NaN;
    const f = readFileSync(`/proc/${serverPid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  };
  return async (...a) => {
    const before = serverCpu();
    const m = await measure(...a);
    return { ...m, serverCpuS: serverCpu() - before };
  };
}

/** "client CPU + server CPU" of a step. */
export const cpuText = (m: ServerMeasurement): string =>
  `${((m.userMs + m.sysMs) / 1000).toFixed(2)} s + ${m.serverCpuS.toFixed(2)} s`;

/** The least wall time the step could take on this machine: client + server CPU over its cores. */
export const cpuFloor = (m: ServerMeasurement): number =>
  ((m.userMs + m.sysMs) / 1000 + m.serverCpuS) / availableParallelism();

/** The environment (AWS_*) that vmvault and restic need for the server. */
export const s3Env = (server: S3TestServer): NodeJS.ProcessEnv => ({
  AWS_ACCESS_KEY_ID: server.accessKeyId,
  AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
  AWS_REGION: server.region,
});

/**
 * rclone configured for `server` by environment (remote `bench:`, RCLONE_CONFIG_BENCH_*, no
 * config file). Run it as `measure(name, r.cmd, r.args(...rcloneArgs), r.env)`: through
 * `env -u AWS_CA_BUNDLE`, since rclone 1.60 fails on AWS_CA_BUNDLE with a plain-http endpoint
 * ("unable to load custom CA bundle").
 */
export function rcloneFor(
  rclone: string,
  server: S3TestServer,
): { cmd: string; args: (...a: string[]) => string[]; env: NodeJS.ProcessEnv; remote: string } {
  return {
    cmd: 'env',
    args: (...a) => ['-u', 'AWS_CA_BUNDLE', rclone, ...a],
    env: {
      RCLONE_CONFIG_BENCH_TYPE: 's3',
      RCLONE_CONFIG_BENCH_PROVIDER: 'Other',
      RCLONE_CONFIG_BENCH_ACCESS_KEY_ID: server.accessKeyId,
      RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY: server.secretAccessKey,
      RCLONE_CONFIG_BENCH_ENDPOINT: server.endpoint,
      RCLONE_CONFIG_BENCH_REGION: server.region,
      RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE: 'true',
    },
    remote: 'bench:',
  };
}
