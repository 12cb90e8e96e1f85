/**
 * Run reports of `vmvault backup` with several domains (docs/cli.md "Logs, notifications and
 * metrics"): a run where one domain fails is partial (exit 3) for the notify command, and the
 * metrics file has one set of series per domain (the one that failed keeps no success).
 */
import { spawnSync } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtClient } from '../../src/libvirt/index.js';
import { parseMetrics } from '../../src/cli/metrics.js';
import { runCli } from '../helpers/cli.js';
import { createTestDomain, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { makeTmpDir } from '../helpers/tmp.js';

const uri = libvirtUri();
const skip = libvirtSkipReason();
if (skip && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(`live backup tests cannot run: ${skip}`);

describe.skipIf(skip !== '')('backup run reports: partial outcome, per-domain metrics', () => {
  let client: LibvirtClient;
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let dom: TestDomain;

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    ({ dir, cleanup } = await makeTmpDir('vmvault-reports-vm-'));
    repo = join(dir, 'repo');
    expect((await runCli(['init', repo])).code).toBe(0);
    dom = await createTestDomain(client, { disks: [{ sizeBytes: 16 * 1024 * 1024 }], start: false });
  });
  afterAll(async () => {
    await dom?.cleanup().catch(() => {});
    await client?.close();
    await cleanup?.();
  });

  it('one domain of two fails: exit 3, VMVAULT_OUTCOME=partial, series per domain', async () => {
    const missing = 'vmvault-test-no-such-domain';
    const file = join(dir, 'vmvault.prom');
    const hook = `cat > "$OUT/in.json"; env -0 > "$OUT/env.txt"`;
    const r = await runCli(
      [
        '--notify-command',
        hook,
        '--metrics-file',
        file,
        'backup',
        '-r',
        repo,
        '--connect',
        uri,
        '--scratchdir',
        dir,
        '-d',
        dom.name,
        '-d',
        missing,
        '--json',
      ],
      { env: { OUT: dir } },
    );
    expect(r.code, r.stderr).toBe(3);
    const results = JSON.parse(r.stdout) as Array<{
      domain: string;
      snapshot?: string;
      error?: unknown;
      durationSeconds: number;
      disks?: Array<{ bytesNew: number; bytesStored: number }>;
    }>;
    const good = results.find((x) => x.domain === dom.name)!;
    expect(good.snapshot).toMatch(/^[0-9a-f]{64}$/);
    expect(good.durationSeconds).toBeGreaterThan(0);
    expect(results.find((x) => x.domain === missing)?.error).toBeDefined();
    expect(JSON.parse(await readFile(join(dir, 'in.json'), 'utf8'))).toEqual(results);
    const vars = Object.fromEntries(
      (await readFile(join(dir, 'env.txt'), 'utf8'))
        .split('\0')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    ) as Record<string, string>;
    expect(vars.VMVAULT_OUTCOME).toBe('partial');
    expect(vars.VMVAULT_EXIT_CODE).toBe('3');
    expect(vars.VMVAULT_VMS).toBe(`${dom.name},${missing}`);

    const text = await readFile(file, 'utf8');
    // The Prometheus client's parser accepts it (python3-prometheus-client, scripts/setup.sh).
    const py = spawnSync(
      '/usr/bin/python3',
      [
        '-c',
        'import sys; from prometheus_client.parser import text_string_to_metric_families as p; list(p(sys.stdin.read()))',
      ],
      { input: text },
    );
    expect(py.status, py.stderr?.toString()).toBe(0);
    const m = parseMetrics(text);
    const value = (name: string, labels: Record<string, string>): number | undefined =>
      [...(m.get(name)?.samples.values() ?? [])].find(
        (s) => JSON.stringify(s.labels) === JSON.stringify({ command: 'backup', repo, ...labels }),
      )?.value;
    expect(value('vmvault_last_run_exit_code', {})).toBe(3);
    expect(value('vmvault_last_run_success', {})).toBe(0);
    expect(value('vmvault_last_success_timestamp_seconds', {})).toBeUndefined();
    expect(value('vmvault_backup_last_run_success', { vm: dom.name })).toBe(1);
    expect(value('vmvault_backup_last_success_timestamp_seconds', { vm: dom.name })).toBeGreaterThan(0);
    expect(value('vmvault_backup_duration_seconds', { vm: dom.name })).toBe(good.durationSeconds);
    expect(value('vmvault_backup_new_bytes', { vm: dom.name })).toBe(
      good.disks!.reduce((n, d) => n + d.bytesNew, 0),
    );
    expect(value('vmvault_backup_last_run_success', { vm: missing })).toBe(0);
    expect(value('vmvault_backup_last_success_timestamp_seconds', { vm: missing })).toBeUndefined();
    expect(value('vmvault_backup_new_bytes', { vm: missing })).toBeUndefined();
  });
});
