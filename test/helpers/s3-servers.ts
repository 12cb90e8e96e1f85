/**
 * Real S3 servers on loopback for the tests (issue 12): `@20minutes/s3rver` in a child process,
 * and OpenStack Swift with its `s3api` middleware (Debian's swift-proxy, swift-account,
 * swift-container, swift-object; four servers, no systemd). Each server lives in its own temp dir
 * on its own free ports, so two test files can run servers at once. `stop()` kills only the
 * processes it started (by pid), waits for them, and removes the dir.
 *
 * Quirks are in ../shared/TESTENV.md §1; in short: clients need forcePathStyle and
 * `requestChecksumCalculation: 'WHEN_REQUIRED'`; s3rver gets suffix ranges wrong and ignores
 * `If-None-Match: *`; Swift answers 501 to `If-None-Match: *` and wants Content-MD5 on
 * DeleteObjects (s3Client() adds it).
 *
 * When Swift is missing, `swiftAvailable()` throws under VMVAULT_TEST_STRICT=1 and otherwise warns
 * and returns false, so a suite can `describe.skipIf(!swiftAvailable())`.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { connect, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, S3Client, type S3ClientConfig } from '@aws-sdk/client-s3';
import { hasTool } from './tools.js';

export interface S3TestServer {
  name: 's3rver' | 'swift';
  /** `http://127.0.0.1:PORT`, path-style. */
  endpoint: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** Kills the server's processes (SIGTERM, SIGKILL after 5 s), waits for them, removes its dir. Idempotent. */
  stop(): Promise<void>;
}

const here = dirname(fileURLToPath(import.meta.url));
const strict = (): boolean => process.env.VMVAULT_TEST_STRICT === '1';

/** Missing → throws in strict mode, else warns and returns false. */
function available(what: string, missing: string[]): boolean {
  if (missing.length === 0) return true;
  const msg = `${what} unavailable: missing ${missing.join(', ')} (run scripts/setup.sh --tests as root)`;
  if (strict()) throw new Error(msg);
  console.warn(`skipping: ${msg}`);
  return false;
}

function missingS3rver(): string[] {
  try {
    createRequire(import.meta.url).resolve('@20minutes/s3rver');
    return [];
  } catch {
    return ['npm package @20minutes/s3rver'];
  }
}

const SWIFT_TOOLS = [
  'swift-proxy-server',
  'swift-account-server',
  'swift-container-server',
  'swift-object-server',
  'swift-ring-builder',
];
const SWIFT_CONF = '/etc/swift/swift.conf';

function missingSwift(): string[] {
  const missing = SWIFT_TOOLS.filter((t) => !hasTool(t));
  // Swift reads its hash path prefix/suffix and storage policies from this fixed path only; the
  // swift package ships it (prefix/suffix "changeme", one default policy: fine for tests).
  if (!existsSync(SWIFT_CONF)) missing.push(SWIFT_CONF);
  return missing;
}

/** Whether s3rver can run (its npm dev dependency is installed). Throws in strict mode when not. */
export function s3rverAvailable(): boolean {
  return available('s3rver', missingS3rver());
}

/** Whether the Swift servers can run. Throws in strict mode when not; else warns and returns false. */
export function swiftAvailable(): boolean {
  return available('Swift s3api', missingSwift());
}

// ---------------------------------------------------------------------------------------------
// processes

interface Proc {
  child: ChildProcess;
  name: string;
  /** The last few KB of its stderr, for error messages. */
  stderr(): string;
  exited(): boolean;
  closed: Promise<void>;
}

let pdeathsig: boolean | undefined;
/**
 * Starts a server. Under `setpriv --pdeathsig SIGKILL` when setpriv has it (util-linux ≥ 2.33):
 * setpriv execs the server in place (same pid), and the kernel kills it if the test process dies
 * without stopping it, so a crashed runner leaves no server behind.
 */
function startProc(name: string, cmd: string, args: string[], opts: { stdin?: 'pipe' } = {}): Proc {
  pdeathsig ??= hasTool('setpriv');
  const [file, argv] = pdeathsig ? ['setpriv', ['--pdeathsig', 'SIGKILL', cmd, ...args]] : [cmd, args];
  const child = spawn(file, argv, { stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  const closed = new Promise<void>((r) => {
    child.once('close', () => r());
    child.once('error', (e) => {
      err += `\n${e.message}`;
      r();
    });
  });
  return {
    child,
    name,
    stderr: () => err.trim().split('\n').slice(-4).join(' | '),
    exited: () => child.exitCode !== null || child.signalCode !== null || child.pid === undefined,
    closed,
  };
}

async function stopProcs(procs: readonly Proc[]): Promise<void> {
  await Promise.all(
    procs.map(async (p) => {
      if (!p.exited()) p.child.kill('SIGTERM');
      const t = setTimeout(() => {
        if (!p.exited()) p.child.kill('SIGKILL');
      }, 5000);
      await p.closed;
      clearTimeout(t);
    }),
  );
}

function stopOnce(f: () => Promise<void>): () => Promise<void> {
  let p: Promise<void> | undefined;
  return () => (p ??= f());
}

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(join(process.env.VMVAULT_TEST_TMP ?? tmpdir(), prefix));
  await chmod(dir, 0o755);
  return dir;
}

/** A TCP port that was free a moment ago (bind 127.0.0.1:0, close). */
export async function freeTcpPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

function tcpOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = connect({ host: '127.0.0.1', port });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

async function httpOk(url: string): Promise<boolean> {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await r.arrayBuffer();
    return r.ok;
  } catch {
    return false;
  }
}

/** Polls `ready` until true; fails early when one of `procs` exits, or after `timeoutMs`. */
async function waitReady(
  what: string,
  procs: readonly Proc[],
  ready: () => Promise<boolean>,
  timeoutMs: number,
) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const dead = procs.find((p) => p.exited());
    if (dead)
      throw new Error(
        `${what}: ${dead.name} exited (${dead.child.exitCode ?? dead.child.signalCode}) before it was ready: ${dead.stderr()}`,
      );
    if (await ready()) return;
    if (Date.now() > end)
      throw new Error(
        `${what}: not ready after ${timeoutMs} ms: ${procs.map((p) => `${p.name}: ${p.stderr()}`).join('; ')}`,
      );
    await new Promise((r) => setTimeout(r, 50));
  }
}

// ---------------------------------------------------------------------------------------------
// s3rver

/**
 * `@20minutes/s3rver` in a child process (`node --openssl-legacy-provider`, see s3rver-child.cjs)
 * on a free port, storing into a fresh temp dir. No bucket exists yet. Credentials S3RVER/S3RVER.
 */
export async function startS3rver(): Promise<S3TestServer> {
  const missing = missingS3rver();
  if (missing.length > 0) throw new Error(`s3rver: missing ${missing.join(', ')} (run npm install)`);
  const dir = await tempDir('vmvault-s3rver-');
  // stdin is a pipe: when this process dies, the child sees it close and exits.
  const p = startProc(
    's3rver',
    process.execPath,
    ['--openssl-legacy-provider', join(here, 's3rver-child.cjs'), '0', dir],
    { stdin: 'pipe' },
  );
  const stop = stopOnce(async () => {
    await stopProcs([p]);
    await rm(dir, { recursive: true, force: true });
  });
  try {
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      const t = setTimeout(() => reject(new Error(`s3rver: no address after 15 s: ${p.stderr()}`)), 15_000);
      p.child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const nl = out.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(t);
        try {
          const a = JSON.parse(out.slice(0, nl)) as { port?: unknown };
          if (typeof a.port !== 'number') throw new Error(`no port in ${out.slice(0, nl)}`);
          resolve(a.port);
        } catch (e) {
          reject(new Error(`s3rver: bad address line: ${(e as Error).message}`));
        }
      });
      void p.closed.then(() => {
        clearTimeout(t);
        reject(new Error(`s3rver exited (${p.child.exitCode ?? p.child.signalCode}): ${p.stderr()}`));
      });
    });
    return {
      name: 's3rver',
      endpoint: `http://127.0.0.1:${port}`,
      accessKeyId: 'S3RVER',
      secretAccessKey: 'S3RVER',
      region: 'us-east-1',
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Swift

const execFileP = (file: string, args: string[]): Promise<{ code: number; out: string }> =>
  new Promise((resolve, reject) =>
    execFile(file, args, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      if (err && code === -1) reject(err);
      else resolve({ code, out: `${stdout}${stderr}`.trim() });
    }),
  );

/** `swift-ring-builder` for one server type, one device; rebalance exits 1 on warnings only. */
async function buildRing(dir: string, type: string, port: number): Promise<void> {
  const builder = join(dir, `${type}.builder`);
  const steps: [string[], number][] = [
    [['create', '6', '1', '1'], 0],
    [['add', `r1z1-127.0.0.1:${port}/d1`, '100'], 0],
    [['rebalance'], 1],
  ];
  for (const [args, okUpTo] of steps) {
    const r = await execFileP('swift-ring-builder', [builder, ...args]);
    if (r.code > okUpTo)
      throw new Error(`swift-ring-builder ${type} ${args[0]} failed (${r.code}): ${r.out}`);
  }
}

function ini(sections: Record<string, Record<string, string | number>>): string {
  return Object.entries(sections)
    .map(
      ([name, kv]) =>
        `[${name}]\n${Object.entries(kv)
          .map(([k, v]) => `${k} = ${v}\n`)
          .join('')}`,
    )
    .join('\n');
}

const PROXY_FILTERS: Record<string, string> = {
  catch_errors: 'catch_errors',
  gatekeeper: 'gatekeeper',
  healthcheck: 'healthcheck',
  'proxy-logging': 'proxy_logging',
  cache: 'memcache', // no memcached running: it degrades to no cache
  listing_formats: 'listing_formats',
  bulk: 'bulk',
  copy: 'copy',
  slo: 'slo',
  dlo: 'dlo',
};

/**
 * OpenStack Swift with s3api + tempauth: proxy, account, container and object servers (one
 * process each, workers = 0) on four free ports, rings and data in a fresh temp dir. Ready once
 * the proxy answers /healthcheck and the three storage servers accept connections. S3 keys:
 * `test:tester` / `testing`.
 */
export async function startSwift(): Promise<S3TestServer> {
  const missing = missingSwift();
  if (missing.length > 0)
    throw new Error(`Swift s3api: missing ${missing.join(', ')} (run scripts/setup.sh --tests as root)`);
  let lastError: Error | undefined;
  // The ports are free when picked but not held; another process can take one before Swift binds
  // it. Then that server gives up after bind_timeout and the start is retried on new ports.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startSwiftOnce();
    } catch (e) {
      lastError = e as Error;
      if (!/address already in use|could not bind/i.test(lastError.message)) throw lastError;
    }
  }
  throw lastError!;
}

async function startSwiftOnce(): Promise<S3TestServer> {
  const dir = await tempDir('vmvault-swift-');
  const procs: Proc[] = [];
  const stop = stopOnce(async () => {
    await stopProcs(procs);
    await rm(dir, { recursive: true, force: true });
  });
  try {
    const ports = { proxy: 0, account: 0, container: 0, object: 0 };
    const taken = new Set<number>();
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) {
      let p: number;
      do p = await freeTcpPort();
      while (taken.has(p));
      taken.add(p);
      ports[k] = p;
    }
    await mkdir(join(dir, 'node', 'd1'), { recursive: true });
    // Run as whoever we are (the servers would otherwise drop root to the `swift` user, which
    // can't write our temp dir). Logs: not to the host's syslog (log_address is a path that
    // doesn't exist → UDP to localhost:514, dropped), warnings to stderr (-v), which we keep.
    const common = {
      bind_ip: '127.0.0.1',
      workers: 0,
      swift_dir: dir,
      user: userInfo().username,
      log_address: join(dir, 'no-syslog'),
      log_level: 'WARNING',
      bind_timeout: 3,
    };
    const storage = ['account', 'container', 'object'] as const;
    await Promise.all(storage.map((t) => buildRing(dir, t, ports[t])));
    for (const t of storage) {
      await writeFile(
        join(dir, `${t}-server.conf`),
        ini({
          DEFAULT: { ...common, bind_port: ports[t], devices: join(dir, 'node'), mount_check: 'false' },
          'pipeline:main': { pipeline: `${t}-server` },
          [`app:${t}-server`]: { use: `egg:swift#${t}` },
          [`${t}-replicator`]: {},
          [`${t}-updater`]: {},
          [`${t}-auditor`]: {},
        }),
      );
    }
    const filters = Object.fromEntries(
      Object.entries(PROXY_FILTERS).map(([n, egg]) => [`filter:${n}`, { use: `egg:swift#${egg}` }]),
    );
    await writeFile(
      join(dir, 'proxy-server.conf'),
      ini({
        DEFAULT: { ...common, bind_port: ports.proxy },
        'pipeline:main': {
          pipeline:
            'catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo proxy-logging proxy-server',
        },
        'app:proxy-server': { use: 'egg:swift#proxy', account_autocreate: 'true' },
        'filter:tempauth': { use: 'egg:swift#tempauth', user_test_tester: 'testing .admin' },
        'filter:s3api': { use: 'egg:swift#s3api', location: 'us-east-1' },
        ...filters,
      }),
    );
    for (const t of [...storage, 'proxy'] as const)
      procs.push(startProc(`swift-${t}-server`, `swift-${t}-server`, [join(dir, `${t}-server.conf`), '-v']));
    const endpoint = `http://127.0.0.1:${ports.proxy}`;
    await waitReady(
      'Swift',
      procs,
      async () =>
        (await httpOk(`${endpoint}/healthcheck`)) &&
        (await Promise.all(storage.map((t) => tcpOpen(ports[t])))).every(Boolean),
      60_000, // about 3 s alone; two at once on 2 busy cores took 17 s
    );
    return {
      name: 'swift',
      endpoint,
      accessKeyId: 'test:tester',
      secretAccessKey: 'testing',
      region: 'us-east-1',
      stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// clients

/**
 * An SDK client for a test server: path style, checksums only when required (else the SDK's
 * aws-chunked trailer bodies are rejected or, on old s3rver, stored corrupt). For Swift it adds
 * Content-MD5 to DeleteObjects, which Swift's s3api requires (the SDK sends a CRC32 instead).
 */
export function s3Client(
  server: Pick<S3TestServer, 'name' | 'endpoint' | 'accessKeyId' | 'secretAccessKey' | 'region'>,
  extra: Partial<S3ClientConfig> = {},
): S3Client {
  const client = new S3Client({
    endpoint: server.endpoint,
    region: server.region,
    forcePathStyle: true,
    credentials: { accessKeyId: server.accessKeyId, secretAccessKey: server.secretAccessKey },
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    ...extra,
  });
  if (server.name === 'swift') {
    client.middlewareStack.add(
      (next, context) => async (args) => {
        const req = args.request as { headers?: Record<string, string>; body?: unknown };
        if (context.commandName === 'DeleteObjectsCommand' && req.headers && !req.headers['content-md5']) {
          const body = req.body;
          if (typeof body === 'string' || body instanceof Uint8Array)
            req.headers['content-md5'] = createHash('md5').update(body).digest('base64');
        }
        return next(args);
      },
      { step: 'build', name: 'vmvaultSwiftContentMd5' },
    );
  }
  return client;
}

/** Creates a bucket (an existing bucket of ours is fine). */
export async function makeBucket(server: S3TestServer, name: string): Promise<void> {
  const client = s3Client(server);
  try {
    await client.send(new CreateBucketCommand({ Bucket: name }));
  } catch (e) {
    const n = (e as { name?: string }).name;
    if (n !== 'BucketAlreadyOwnedByYou' && n !== 'BucketAlreadyExists') throw e;
  } finally {
    client.destroy();
  }
}
