import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startServe, type Served } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';
import { startUi, type RunningUi } from '../helpers/ui.js';
import { UiServer, type Dashboard } from '../../src/ui/index.js';

const MiB = 1024 * 1024;
const TOKEN = '5d41402abc4b2a76b9719d911017c592';
const HOSTILE_VM = '<img src=x onerror=alert(1)>';
const HOSTILE_NOTE = '</td><script>alert(2)</script><b onmouseover=alert(3)>note';
const HOSTILE_TAG = '<svg onload=alert(4)>';
const ARTIFACTS = fileURLToPath(new URL('../../test-artifacts/', import.meta.url));
const CHROMIUM = '/usr/bin/chromium';
const run = requireTools(['chromium']);

/** The little of the DOM the page functions below use (the project compiles without lib.dom). */
interface El {
  dataset: Record<string, string | undefined>;
  textContent: string | null;
  querySelector(selector: string): El | null;
  querySelectorAll(selector: string): Iterable<El>;
  closest(selector: string): El | null;
}

describe.runIf(run)('vmvault ui in headless Chromium', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let ui: RunningUi;
  let browser: Browser;
  let served: Served;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir());
    repo = join(dir, 'repo');
    const a = join(dir, 'a.raw');
    const b = join(dir, 'b.raw');
    await writeFile(a, Buffer.concat([seededBytes(3 * MiB, 1), Buffer.alloc(2 * MiB), seededBytes(MiB, 2)]));
    await writeFile(b, Buffer.concat([seededBytes(2 * MiB, 1), seededBytes(MiB, 9), Buffer.alloc(MiB)]));
    expect((await runCli(['init', repo, '--encryption', 'none'])).code).toBe(0);
    const backups: Array<[string, string, string[]]> = [
      ['web', '2026-11-30T22:00:00Z', [a]],
      ['web', '2026-12-01T22:00:00Z', [b]],
      ['web', '2026-12-02T22:00:00Z', [a, `${b}:vdb`]],
      [HOSTILE_VM, '2026-12-01T03:00:00Z', [b]],
      [HOSTILE_VM, '2026-12-02T03:00:00Z', [a]],
    ];
    for (const [vm, time, images] of backups) {
      const r = await runCli([
        'backup-image',
        '-q',
        '-r',
        repo,
        '--vm',
        vm,
        '--time',
        time,
        '--tag',
        'nightly',
        ...images,
      ]);
      expect(r.code, r.stderr).toBe(0);
    }
    for (const args of [
      ['note', `${HOSTILE_VM}@latest`, HOSTILE_NOTE],
      ['tag', `${HOSTILE_VM}@latest`, '--add', HOSTILE_TAG],
      ['protect', 'web@latest'],
    ]) {
      const r = await runCli([...args, '-r', repo]);
      expect(r.code, r.stderr).toBe(0);
    }
    const c = await runCli(['check', '-r', repo]);
    expect(c.code, c.stderr).toBe(0);
    // A reader holding a session while the page is read: it shows under "Sessions and locks".
    served = await startServe(['-r', repo, 'web@latest', '--scratchdir', dir]);
    const tokenFile = join(dir, 'token');
    await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    ui = await startUi(['-r', repo, '--listen', '127.0.0.1:0', '--token-file', tokenFile]);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  afterAll(async () => {
    await browser?.close();
    await served?.stop();
    await ui?.stop();
    await cleanup();
  });

  it('shows every VM and snapshot with the figures of stats --json; hostile names stay text', async () => {
    const { page, problems } = await watchedPage(browser);

    // The token once in the URL; the server swaps it for a cookie and drops it from the address.
    await page.goto(`${ui.url}?token=${TOKEN}`);
    expect(page.url()).toBe(ui.url);
    await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });

    const st = await runCli(['stats', '-r', repo, '--json']);
    expect(st.code, st.stderr).toBe(0);
    const stats = JSON.parse(st.stdout) as Dashboard['stats'];
    const api = (await page.evaluate(async () => (await fetch('/api/dashboard')).json())) as Dashboard;
    expect(api.stats).toEqual(stats);

    // The summary: the repository's figures.
    for (const key of [
      'vms',
      'snapshots',
      'storedBytes',
      'logicalBytes',
      'uniqueBytes',
      'dedupRatio',
      'compressionRatio',
    ] as const) {
      const v = await page.getAttribute(`[data-stat="${key}"]`, 'data-value');
      expect(Number(v), key).toBe(stats[key]);
    }
    expect(await page.getAttribute('[data-field="check-state"]', 'data-value')).toBe('ok');

    // The VM table: one row per VM, the VM's figures.
    const rows = await page.$$eval('table.vms tbody tr[data-vm]', (trs) =>
      (trs as unknown as El[]).map((tr) => {
        const f: Record<string, string> = {};
        for (const td of tr.querySelectorAll('td[data-field]')) f[td.dataset.field!] = td.dataset.value!;
        return { vm: tr.dataset.vm!, text: tr.querySelector('td')!.textContent, f };
      }),
    );
    expect(rows.map((r) => r.vm).sort()).toEqual([HOSTILE_VM, 'web'].sort());
    for (const r of rows) {
      const v = api.vms.find((x) => x.name === r.vm)!;
      expect(r.text).toBe(r.vm); // shown as text, not markup
      expect(Number(r.f.snapshots)).toBe(v.snapshots);
      expect(Number(r.f.virtualBytes)).toBe(v.virtualBytes);
      expect(Number(r.f.logicalBytes)).toBe(v.logicalBytes);
      expect(Number(r.f.uniqueBytes)).toBe(v.uniqueBytes);
      expect(Number(r.f.dedupRatio)).toBe(v.dedupRatio);
    }
    expect(rows.reduce((a, r) => a + Number(r.f.snapshots), 0)).toBe(stats.snapshots);
    expect(rows.reduce((a, r) => a + Number(r.f.virtualBytes), 0)).toBe(stats.virtualBytes);

    // Every snapshot, under its VM, with its sizes, tags, note and protection.
    const snaps = await page.$$eval('table.snapshots tr[data-snapshot-id]', (trs) =>
      (trs as unknown as El[]).map((e) => {
        const f = (name: string): El => e.querySelector(`[data-field="${name}"]`)!;
        return {
          id: e.dataset.snapshotId!,
          vm: e.dataset.vm!,
          section: e.closest('[data-vm-detail]')!.dataset.vmDetail!,
          virtual: Number(f('virtualBytes').dataset.value),
          newBytes: Number(f('newBytes').dataset.value),
          stored: Number(f('storedBytes').dataset.value),
          mode: f('mode').textContent,
          tags: [...f('tags').querySelectorAll('.tag')].map((t) => t.textContent).sort(),
          note: f('note').textContent,
          protected: f('protected').dataset.value,
        };
      }),
    );
    expect(snaps).toHaveLength(api.snapshots.length);
    expect(snaps).toHaveLength(5);
    for (const s of api.snapshots) {
      const shown = snaps.find((x) => x.id === s.id)!;
      expect(shown, s.id).toBeDefined();
      expect(shown).toEqual({
        id: s.id,
        vm: s.vm,
        section: s.vm,
        virtual: s.virtualBytes,
        newBytes: s.newBytes,
        stored: s.storedBytes,
        mode: s.mode,
        tags: [...s.tags].sort(),
        note: s.note ?? '',
        protected: String(s.protected),
      });
    }
    expect(snaps.find((s) => s.vm === HOSTILE_VM && s.note === HOSTILE_NOTE)?.tags).toEqual(
      [HOSTILE_TAG, 'nightly'].sort(),
    );
    expect(snaps.filter((s) => s.protected === 'true')).toHaveLength(1);
    expect(await page.$$('[data-timeline] .mark')).toHaveLength(5);

    // The hostile strings made no element: no <img>, <script> or <svg> but our own.
    expect(await page.$$('main img, main svg, main script, [onerror], [onload], [onmouseover]')).toHaveLength(
      0,
    );
    expect(await page.$$eval('script', (s) => s.map((x) => x.getAttribute('src')))).toEqual([
      '/vendor/uplot.js',
      '/app.js',
    ]);

    // The serve started above holds a session.
    expect(api.sessions.map((x) => x.command)).toEqual(['serve']);
    expect(await page.textContent(`tr[data-session="${api.sessions[0]!.id}"]`)).toMatch(/serve.*running/);

    // The growth chart (uPlot) drew one point per snapshot time.
    expect(await page.$$('#chart .uplot canvas')).toHaveLength(1);

    await mkdir(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'ui-dashboard.png'), fullPage: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it('shows every other repository-made string as text too: hosts, commands, lock, check lines, warnings', async () => {
    const evil = (n: number): string => `<img src=x onerror=alert(${n})>`;
    const now = new Date().toISOString();
    const zeros = {
      snapshotsDamaged: 0,
      indexesDamaged: 0,
      chunksReferenced: 4,
      chunksStored: 4,
      packsStored: 1,
    };
    const data: Dashboard = {
      version: 1,
      generatedAt: now,
      repository: { location: evil(1), id: 'ab'.repeat(32), encryption: 'aes-256-gcm', chunkSizeBytes: MiB },
      stats: {
        ...zeros,
        snapshots: 1,
        vms: 1,
        virtualBytes: 8 * MiB,
        logicalBytes: 4 * MiB,
        uniqueBytes: 4 * MiB,
        storedBytes: 3 * MiB,
        dataStoredBytes: 3 * MiB,
        dedupRatio: 1,
        compressionRatio: 4 / 3,
      },
      vms: [
        {
          name: evil(2),
          snapshots: 1,
          virtualBytes: 8 * MiB,
          logicalBytes: 4 * MiB,
          uniqueBytes: 4 * MiB,
          chunksReferenced: 4,
          dedupRatio: 1,
          compressionRatio: 4 / 3,
        },
      ],
      snapshots: [
        {
          id: 'cd'.repeat(32),
          vm: evil(2),
          time: now,
          mode: evil(3),
          tags: [evil(4)],
          note: evil(5),
          protected: true,
          disks: [
            {
              target: 'vda',
              sizeBytes: 8 * MiB,
              allocatedBytes: 4 * MiB,
              bytesNew: 4 * MiB,
              bytesStored: 3 * MiB,
            },
          ],
          virtualBytes: 8 * MiB,
          newBytes: 4 * MiB,
          storedBytes: 3 * MiB,
        },
      ],
      growth: [
        {
          id: 'cd'.repeat(32),
          time: now,
          vm: evil(2),
          logicalBytes: 4 * MiB,
          uniqueBytes: 4 * MiB,
          storedBytes: 3 * MiB,
        },
      ],
      sessions: [
        {
          id: 'ef'.repeat(16),
          host: evil(6),
          pid: 1,
          command: evil(7),
          startedAt: now,
          lastHeartbeat: now,
          ageMs: 1000,
          stale: false,
          damaged: null,
        },
        {
          id: '12'.repeat(16),
          host: null,
          pid: null,
          command: null,
          startedAt: null,
          lastHeartbeat: now,
          ageMs: 9e6,
          stale: true,
          damaged: evil(8),
        },
      ],
      maintenanceLock: {
        session: '12'.repeat(16),
        host: evil(9),
        pid: 2,
        command: evil(10),
        since: now,
        damaged: evil(11),
        stale: true,
      },
      check: {
        record: {
          version: 1,
          startedAt: now,
          finishedAt: now,
          host: evil(12),
          ok: false,
          readData: true,
          repair: false,
          subset: evil(13),
          snapshots: 1,
          snapshotsDamaged: 0,
          chunksReferenced: 4,
          chunksRead: 4,
          chunksMissing: 1,
          chunksCorrupt: 1,
          problems: 2,
          lines: [evil(14)],
        },
        modifiedAt: now,
      },
      warnings: [evil(15)],
    };
    const server = await UiServer.start({
      source: { get: () => Promise.resolve({ data, error: evil(16) }) },
      host: '127.0.0.1',
      port: 0,
    });
    try {
      const { page, problems } = await watchedPage(browser);
      await page.goto(server.url);
      await page.waitForSelector('body[data-loaded="true"]', { timeout: 10_000 });
      const text = (await page.textContent('body')) ?? '';
      for (let n = 1; n <= 16; n++) expect(text, `string ${n}`).toContain(evil(n));
      expect(await page.$$('main img, main svg, [onerror]')).toHaveLength(0);
      expect(await page.getAttribute('[data-field="check-state"]', 'data-value')).toBe('failed');
      await page.screenshot({ path: join(ARTIFACTS, 'ui-dashboard-hostile.png'), fullPage: true });
      expect(problems).toEqual([]);
      await page.close();
    } finally {
      await server.close();
    }
  });

  it('without the token the page says how to sign in, and the API answers 401', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    const res = await page.goto(ui.url);
    expect(res?.status()).toBe(401);
    expect(await page.textContent('body')).toMatch(/needs its token/);
    await context.close();
  });
});

/** A new page whose dialogs, console errors and warnings, CSP violations and failed requests are collected. */
async function watchedPage(browser: Browser): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const problems: string[] = [];
  page.on('dialog', (d) => {
    problems.push(`dialog: ${d.message()}`);
    void d.dismiss();
  });
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') problems.push(`console ${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
  });
  // A blocked script, style or request (CSP) comes out as a console error.
  await page.addInitScript({
    content:
      "document.addEventListener('securitypolicyviolation', (e) => console.error('CSP violation: ' + e.violatedDirective + ' ' + e.blockedURI));",
  });
  return { page, problems };
}
