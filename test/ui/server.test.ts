import { connect, type Socket } from 'node:net';
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { makeTlsCerts } from '../helpers/nbd-peers.js';
import { requireTools } from '../helpers/tools.js';
import { httpGet, startUi, type RunningUi } from '../helpers/ui.js';
import { Repository } from '../../src/repo/index.js';
import { DashboardSource, UiServer, type Dashboard } from '../../src/ui/index.js';

const MiB = 1024 * 1024;
const TOKEN = 'a3f1c0ffee0123456789abcdef0123456789';
const HOSTILE_VM = '<script>alert(1)';
const HOSTILE_NOTE = '</script><script>alert(2)</script>';
const run = requireTools(['certtool']);

describe.runIf(run)('vmvault ui: the server and its API', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let tokenFile: string;
  let ui: RunningUi;
  const bearer = { Authorization: `Bearer ${TOKEN}` };

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repo = join(dir, 'repo');
    const img = join(dir, 'disk.raw');
    await writeFile(img, Buffer.concat([seededBytes(2 * MiB, 3), Buffer.alloc(MiB)]));
    expect((await runCli(['init', repo, '--encryption', 'none'])).code).toBe(0);
    for (const vm of ['web', HOSTILE_VM]) {
      const b = await runCli(['backup-image', '-q', '-r', repo, '--vm', vm, '--tag', '<b>t</b>', img]);
      expect(b.code, b.stderr).toBe(0);
    }
    expect((await runCli(['note', '-r', repo, `${HOSTILE_VM}@latest`, HOSTILE_NOTE])).code).toBe(0);
    const c = await runCli(['check', '-r', repo]);
    expect(c.code, c.stderr).toBe(0);
    tokenFile = join(dir, 'token');
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    ui = await startUi(['-r', repo, '--listen', '127.0.0.1:0', '--token-file', tokenFile]);
  });
  afterAll(async () => {
    await ui?.stop();
    await cleanup();
  });

  it('prints the URL on stderr with a placeholder, never the token', () => {
    expect(ui.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/);
    expect(ui.stderr()).toContain('?token=TOKEN');
    expect(ui.stderr()).not.toContain(TOKEN);
  });

  it('answers 401 without the token or with a wrong one, with the security headers', async () => {
    const cases: Array<Record<string, string>> = [
      {},
      { Authorization: 'Bearer wrong-token-0123456789' },
      { Cookie: 'x=1' },
    ];
    for (const headers of cases) {
      for (const path of ['', 'api/dashboard', 'api/health', 'app.js']) {
        const r = await httpGet(`${ui.url}${path}`, { headers });
        expect(r.status, `${path} ${JSON.stringify(headers)}`).toBe(401);
        expect(r.headers['www-authenticate']).toMatch(/^Bearer/);
        expect(r.body).not.toContain('"stats"');
      }
    }
    const wrongQuery = await httpGet(`${ui.url}?token=nope`);
    expect(wrongQuery.status).toBe(401);
    expect(wrongQuery.headers['set-cookie']).toBeUndefined();
    const r = await httpGet(ui.url);
    expect(r.headers['content-security-policy']).toMatch(/default-src 'self'/);
    expect(r.headers['content-security-policy']).toMatch(/frame-ancestors 'none'/);
    expect(r.headers['x-content-type-options']).toBe('nosniff');
    expect(r.headers['referrer-policy']).toBe('no-referrer');
  });

  it('answers the API with a Bearer token: the figures of stats --json', async () => {
    const r = await httpGet(`${ui.url}api/dashboard`, { headers: bearer });
    expect(r.status, r.body).toBe(200);
    expect(r.headers['content-type']).toMatch(/^application\/json/);
    expect(r.headers['cache-control']).toBe('no-store');
    const d = JSON.parse(r.body) as Dashboard;
    const st = await runCli(['stats', '-r', repo, '--json']);
    expect(st.code, st.stderr).toBe(0);
    expect(d.stats).toEqual(JSON.parse(st.stdout));
    expect(d.vms.map((v) => v.name).sort()).toEqual([HOSTILE_VM, 'web'].sort());
    expect(d.snapshots).toHaveLength(2);
    expect(d.growth).toHaveLength(2);
    expect(d.check && 'record' in d.check && d.check.record.ok).toBe(true);
    expect(d.sessions).toEqual([]); // the read's own session ended with it
    const health = await httpGet(`${ui.url}api/health`, { headers: bearer });
    expect(health.status).toBe(200);
    expect(JSON.parse(health.body)).toEqual({ ok: true });
    const head = await httpGet(`${ui.url}api/dashboard`, { method: 'HEAD', headers: bearer });
    expect(head.status).toBe(200);
    expect(head.body).toBe('');
  });

  it('sends names, tags and notes JSON-escaped: no markup in the response', async () => {
    const r = await httpGet(`${ui.url}api/dashboard`, { headers: bearer });
    expect(r.body).not.toMatch(/[<>]/);
    expect(r.body).toContain('\\u003cscript\\u003ealert(1)');
    const d = JSON.parse(r.body) as Dashboard;
    const snap = d.snapshots.find((s) => s.vm === HOSTILE_VM)!;
    expect(snap.note).toBe(HOSTILE_NOTE);
    expect(snap.tags).toEqual(['<b>t</b>']);
    // The page itself is static: nothing of the repository is in it.
    const page = await httpGet(ui.url, { headers: bearer });
    expect(page.status).toBe(200);
    expect(page.body).not.toContain('alert');
    expect(page.body).not.toMatch(/<script>[^<]/); // only <script src=...> of our own files
  });

  it('exchanges ?token= on the page for an HttpOnly SameSite=Strict cookie and drops it from the URL', async () => {
    const r = await httpGet(`${ui.url}?token=${TOKEN}&x=1`);
    expect(r.status).toBe(303);
    expect(r.headers.location).toBe('/?x=1');
    const setCookie = r.headers['set-cookie']?.[0] ?? '';
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=Strict/);
    expect(setCookie).not.toMatch(/Secure/); // plain HTTP
    expect(setCookie).not.toContain(TOKEN);
    const cookie = setCookie.split(';')[0]!;
    const page = await httpGet(ui.url, { headers: { Cookie: cookie } });
    expect(page.status).toBe(200);
    expect(page.body).toContain('<script src="/app.js"');
    for (const path of [
      'api/dashboard',
      'app.js',
      'app.css',
      'vendor/uplot.js',
      'vendor/uplot.css',
      'favicon.svg',
    ]) {
      const a = await httpGet(`${ui.url}${path}`, { headers: { Cookie: cookie } });
      expect(a.status, path).toBe(200);
    }
    const js = await httpGet(`${ui.url}app.js`, { headers: { Cookie: cookie } });
    expect(js.headers['content-type']).toMatch(/^text\/javascript/);
    const bad = await httpGet(`${ui.url}api/dashboard`, {
      headers: { Cookie: `${cookie.split('=')[0]}=forged` },
    });
    expect(bad.status).toBe(401);
  });

  it('is read-only: 405 for anything but GET and HEAD', async () => {
    for (const method of ['POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS']) {
      const r = await httpGet(`${ui.url}api/dashboard`, { method, headers: bearer });
      expect(r.status, method).toBe(405);
      expect(r.headers.allow).toBe('GET, HEAD');
    }
  });

  it('refuses requests for other host names (DNS rebinding): 421, 400 without a Host', async () => {
    const port = new URL(ui.url).port;
    for (const host of ['evil.example', `evil.example:${port}`, '127.0.0.1:1', `127.0.0.2:${port}`]) {
      const r = await httpGet(`${ui.url}api/dashboard`, { headers: { ...bearer, Host: host } });
      expect(r.status, host).toBe(421);
    }
    for (const host of [`localhost:${port}`, `127.0.0.1:${port}`, `[::1]:${port}`]) {
      const r = await httpGet(`${ui.url}api/health`, { headers: { ...bearer, Host: host } });
      expect(r.status, host).toBe(200);
    }
    const r = await rawRequest(Number(port), 'GET /api/health HTTP/1.0\r\n\r\n');
    expect(r).toMatch(/^HTTP\/1\.1 400/);
  });

  it('answers 404 for other paths', async () => {
    const r = await httpGet(`${ui.url}etc/passwd`, { headers: bearer });
    expect(r.status).toBe(404);
    const t = await httpGet(`${ui.url}../../etc/passwd`, { headers: bearer });
    expect(t.status).toBe(404);
  });

  it('refuses to listen beyond loopback without a token, and bad token files, with one line (exit 2)', async () => {
    const beyond = await runCli(['ui', '-r', repo, '--listen', '0.0.0.0:0']);
    expect(beyond.code).toBe(2);
    expect(expectOneLineError(beyond)).toMatch(/beyond loopback\) needs a token; give --token-file FILE/);
    const open = join(dir, 'open-token');
    await writeFile(open, `${TOKEN}\n`);
    await chmod(open, 0o644);
    const readable = await runCli(['ui', '-r', repo, '--token-file', open]);
    expect(readable.code).toBe(2);
    expect(expectOneLineError(readable)).toMatch(/can be read by other users \(mode 0644\); run 'chmod 600/);
    const shortFile = join(dir, 'short-token');
    await writeFile(shortFile, 'abc\n', { mode: 0o600 });
    const tooShort = await runCli(['ui', '-r', repo, '--token-file', shortFile]);
    expect(tooShort.code).toBe(2);
    expect(expectOneLineError(tooShort)).toMatch(/16 to 1024 visible ASCII/);
    const half = await runCli(['ui', '-r', repo, '--tls-cert', tokenFile]);
    expect(half.code).toBe(2);
    expect(expectOneLineError(half)).toMatch(/--tls-cert and --tls-key go together/);
    const missing = await runCli(['ui', '-r', repo, '--token-file', join(dir, 'nope')]);
    expect(missing.code).toBe(2);
    expect(expectOneLineError(missing)).toMatch(/cannot read the token file .*ENOENT/);
  });

  it('serves HTTPS with --tls-cert/--tls-key (Secure cookie), and stops on SIGTERM with exit 0', async () => {
    const certs = await makeTlsCerts(await mkdirIn(dir, 'tls'));
    const tls = await startUi([
      '-r',
      repo,
      '--listen',
      '127.0.0.1:0',
      '--token-file',
      tokenFile,
      '--tls-cert',
      join(certs.dir, 'server-cert.pem'),
      '--tls-key',
      join(certs.dir, 'server-key.pem'),
    ]);
    try {
      expect(tls.url).toMatch(/^https:\/\/127\.0\.0\.1:\d+\/$/);
      const ca = await readFile(certs.caFile);
      const r = await httpGet(`${tls.url}api/dashboard`, { headers: bearer, ca });
      expect(r.status).toBe(200);
      expect((JSON.parse(r.body) as Dashboard).stats.snapshots).toBe(2);
      const login = await httpGet(`${tls.url}?token=${TOKEN}`, { ca });
      expect(login.status).toBe(303);
      expect(login.headers['set-cookie']?.[0]).toMatch(/; Secure/);
      const noToken = await httpGet(`${tls.url}api/dashboard`, { ca });
      expect(noToken.status).toBe(401);
      await expect(httpGet(`${tls.url.replace('https:', 'http:')}api/health`)).rejects.toThrow();
    } finally {
      expect(await tls.stop('SIGTERM')).toBe(0);
    }
  });

  it('reads an encrypted repository with the password given once at start', async () => {
    const env = { VMVAULT_TEST_KDF_N: '16384', VMVAULT_PASSWORD: 'ui password', VMVAULT_PASSWORD_FILE: '' };
    const enc = join(dir, 'enc');
    expect((await runCli(['init', enc, '--encryption', 'aes-256-gcm'], { env })).code).toBe(0);
    const img = join(dir, 'disk.raw');
    expect((await runCli(['backup-image', '-q', '-r', enc, '--vm', 'secret', img], { env })).code).toBe(0);
    const u = await startUi(['-r', enc, '--listen', '127.0.0.1:0'], env);
    try {
      const r = await httpGet(`${u.url}api/dashboard`);
      expect(r.status).toBe(200);
      const d = JSON.parse(r.body) as Dashboard;
      expect(d.repository.encryption).toBe('aes-256-gcm');
      expect(d.vms.map((v) => v.name)).toEqual(['secret']);
    } finally {
      expect(await u.stop()).toBe(0);
    }
  });

  it('bounds connections per client, and a reload storm reads the repository once', async () => {
    const r = await Repository.open(repo, { workers: 0 });
    let reads = 0;
    const scan = r.scanSnapshots.bind(r);
    r.scanSnapshots = (...a: Parameters<typeof scan>) => {
      reads++;
      return scan(...a);
    };
    const server = await UiServer.start({
      source: new DashboardSource(r, { maxAgeMs: 60_000 }),
      host: '127.0.0.1',
      port: 0,
      limits: { maxConnectionsPerClient: 30 },
    });
    const sockets: Socket[] = [];
    try {
      const answers = await Promise.all(
        Array.from({ length: 20 }, () => httpGet(`${server.url}api/dashboard`)),
      );
      expect(answers.map((a) => a.status)).toEqual(Array(20).fill(200));
      expect(new Set(answers.map((a) => a.body)).size).toBe(1);
      expect(reads).toBe(1);
      await new Promise((res) => setTimeout(res, 300)); // the storm's connections close
      for (let i = 0; i < 30; i++) sockets.push(await openSocket(server.port));
      const fourth = await openSocket(server.port);
      const closed = await new Promise<boolean>((resolve) => {
        fourth.once('close', () => resolve(true));
        fourth.write('GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n');
        setTimeout(() => resolve(false), 2000);
      });
      expect(closed).toBe(true);
      sockets[0]!.destroy();
      await new Promise((res) => setTimeout(res, 100));
      expect((await httpGet(`${server.url}api/health`)).status).toBe(200);
    } finally {
      for (const s of sockets) s.destroy();
      await server.close();
      await r.close();
    }
  });
});

function openSocket(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** Sends `text` on a new connection and resolves with everything the server answers. */
async function rawRequest(port: number, text: string): Promise<string> {
  const s = await openSocket(port);
  return new Promise((resolve) => {
    let out = '';
    s.on('data', (d: Buffer) => (out += d.toString()));
    s.on('close', () => resolve(out));
    s.end(text);
  });
}

async function mkdirIn(dir: string, name: string): Promise<string> {
  const { mkdir } = await import('node:fs/promises');
  const p = join(dir, name);
  await mkdir(p);
  return p;
}
