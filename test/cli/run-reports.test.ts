import { execFileSync, spawnSync } from 'node:child_process';
import { chmod, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { outcomeOf } from '../../src/cli/after-run.js';
import { applyUpdates, escapeLabelValue, formatMetrics, parseMetrics } from '../../src/cli/metrics.js';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

/**
 * The run reports of docs/cli.md "Logs, notifications and metrics": --log-file, --json-progress,
 * --notify-command (+ --notify-timeout) and --metrics-file, on backup-image runs of a small qcow2.
 * The metrics file is read back with the Prometheus project's own Python parser
 * (python3-prometheus-client), not with vmvault's.
 */

const MiB = 1024 * 1024;
const PYTHON = '/usr/bin/python3';

function hasPromParser(): boolean {
  const ok = spawnSync(PYTHON, ['-c', 'import prometheus_client.parser'], { stdio: 'ignore' }).status === 0;
  if (!ok && process.env.VMVAULT_TEST_STRICT === '1')
    throw new Error('missing python3-prometheus-client (run scripts/setup.sh --tests as root)');
  if (!ok) console.warn('skipping: missing python3-prometheus-client');
  return ok;
}
const run = requireTools(['qemu-img']) && hasPromParser();

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}
interface PromFamily {
  name: string;
  type: string;
  help: string;
  samples: Sample[];
}

/** The file as Prometheus' client library parses it (it throws on anything off the format). */
function promParse(text: string): PromFamily[] {
  const script = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for f in text_string_to_metric_families(sys.stdin.read()):
    out.append({"name": f.name, "type": f.type, "help": f.documentation,
                "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]})
print(json.dumps(out))
`;
  return JSON.parse(execFileSync(PYTHON, ['-c', script], { input: text, encoding: 'utf8' })) as PromFamily[];
}

function sample(fams: PromFamily[], name: string, labels: Record<string, string>): number | undefined {
  return fams
    .find((f) => f.name === name)
    ?.samples.find((s) => JSON.stringify(s.labels) === JSON.stringify(sortKeys(labels)))?.value;
}
const sortKeys = (o: Record<string, string>): Record<string, string> =>
  Object.fromEntries(Object.entries(o).sort(([a], [b]) => a.localeCompare(b)));

interface Summary {
  message_type: string;
  snapshot: string;
  vm: string;
  disks: Array<{ bytesNew: number; bytesStored: number; bytesRead: number; sizeBytes: number }>;
}

const LINE = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) vmvault\[(\d+)\] backup-image: (.*)$/;

describe.runIf(run)('run reports: --log-file, --json-progress, --notify-command, --metrics-file', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: string;
  let img: string;
  const env = (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
    VMVAULT_TEST_KDF_N: '16384',
    VMVAULT_PASSWORD: 'pw-never-in-a-hook',
    VMVAULT_PASSWORD_FILE: '',
    VMVAULT_PASSWORD_COMMAND: '',
    VMVAULT_KEY_CACHE: '',
    AWS_SECRET_ACCESS_KEY: 'secret-never-in-a-hook',
    ...extra,
  });

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-reports-'));
    // A hostile repository path: it becomes the metrics' repo label and VMVAULT_REPO.
    await mkdir(join(dir, 'r"e\\p\no'));
    repo = join(dir, 'r"e\\p\no', 'repo');
    const raw = join(dir, 'a.raw');
    await writeFile(raw, Buffer.concat([seededBytes(3 * MiB, 5), Buffer.alloc(MiB)]));
    img = join(dir, 'a.qcow2');
    execFileSync('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, img]);
    const init = await runCli(['init', repo, '--encryption', 'aes-256-gcm'], { env: env() });
    expect(init.code, init.stderr).toBe(0);
  });
  afterAll(async () => cleanup?.());

  it('--log-file: timestamped lines with the command, progress start and done, warnings and the end; appended across runs', async () => {
    const log = join(dir, 'run.log');
    // A key cache others can read is not used: a warning (stderr and the log).
    const cache = join(dir, 'open-cache');
    await mkdir(cache);
    await chmod(cache, 0o755);
    const a = await runCli(['--log-file', log, 'backup-image', '-r', repo, '--vm', 'web', `${img}:vda`], {
      env: env({ VMVAULT_KEY_CACHE: cache }),
    });
    expect(a.code, a.stderr).toBe(0);
    expect(a.stderr).toMatch(/^warning: key cache .* is not used/m);
    const b = await runCli(
      ['--log-file', log, 'backup-image', '-r', repo, '--vm', 'web', join(dir, 'gone.raw')],
      {
        env: env(),
      },
    );
    expect(b.code).toBe(1);

    const lines = (await readFile(log, 'utf8')).split('\n');
    expect(lines.pop()).toBe(''); // ends with a newline
    for (const l of lines) expect(l).toMatch(LINE);
    const texts = lines.map((l) => LINE.exec(l)![3]!);
    const pids = new Set(lines.map((l) => LINE.exec(l)![2]));
    expect(pids.size).toBe(2); // two runs, one file
    // The repository path's newline is escaped: one event, one line.
    expect(texts[0]).toMatch(/^started \(repository .*r"e\\p\\x0ao\/repo\) for web$/);
    expect(texts).toContainEqual(expect.stringMatching(/^warning: key cache .* is not used/));
    expect(texts).toContainEqual(expect.stringMatching(/^web\/vda: started, 4\.00 MiB$/));
    expect(texts).toContainEqual(
      expect.stringMatching(/^web\/vda: read \d+\.\d+ MiB of 4\.00 MiB in \d+\.\d s \(\d+\.\d MiB\/s\)$/),
    );
    expect(texts).toContainEqual(
      expect.stringMatching(/^summary \{"message_type":"summary","snapshot":"[0-9a-f]{64}"/),
    );
    const ends = texts.filter((t) => t.startsWith('finished: '));
    expect(ends).toHaveLength(2);
    expect(ends[0]).toMatch(/^finished: success, exit code 0, \d+\.\d s$/);
    expect(ends[1]).toMatch(/^finished: failure, exit code 1, \d+\.\d s: cannot read image .*gone\.raw/);
    expect(texts.at(-1)).toBe(ends[1]); // the end is the last line
    const times = lines.map((l) => Date.parse(LINE.exec(l)![1]!));
    expect([...times].sort((x, y) => x - y)).toEqual(times);
  });

  it('an unwritable --log-file is a one-line usage error (exit 2) and nothing runs', async () => {
    const r = await runCli(
      ['--log-file', join(dir, 'no-such-dir', 'x.log'), 'backup-image', '-r', repo, '--vm', 'web', img],
      { env: env() },
    );
    expect(r.code).toBe(2);
    expect(expectOneLineError(r)).toMatch(
      /^vmvault: cannot open the log file .*x\.log: ENOENT.*; give --log-file a file in a directory that exists/,
    );
    expect(r.stderr).not.toMatch(/web\/vda/);
  });

  it('--json-progress: JSON progress lines on stderr (start, done) beside the JSON summary; without --json a usage error', async () => {
    const r = await runCli(
      ['--json-progress', 'backup-image', '-r', repo, '--vm', 'prog', `${img}:vda`, '--json'],
      { env: env() },
    );
    expect(r.code, r.stderr).toBe(0);
    expect((JSON.parse(r.stdout) as Summary).message_type).toBe('summary');
    const events = r.stderr
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const e of events) {
      expect(e).toMatchObject({ message_type: 'progress', command: 'backup-image', label: 'prog/vda' });
      expect(Number.isNaN(Date.parse(e.time as string))).toBe(false);
    }
    expect(events[0]).toMatchObject({ event: 'start', total_bytes: 4 * MiB, done_bytes: 0 });
    expect(events.at(-1)).toMatchObject({
      event: 'done',
      total_bytes: 4 * MiB,
      done_bytes: 4 * MiB,
      percent: 100,
    });
    expect(events.at(-1)!.read_bytes as number).toBeGreaterThanOrEqual(3 * MiB);

    const bad = await runCli(['--json-progress', 'backup-image', '-r', repo, '--vm', 'prog', img], {
      env: env(),
    });
    expect(bad.code).toBe(2);
    expect(expectOneLineError(bad)).toMatch(/--json-progress needs --json; add --json/);
  });

  it('--notify-command: the --json summary on stdin, the outcome and the run in the environment, no secrets; its output on stderr', async () => {
    const hook = `cat > "$OUT/in.json"; env -0 > "$OUT/env.txt"; echo said-by-the-hook`;
    const r = await runCli(
      ['--notify-command', hook, 'backup-image', '-r', repo, '--vm', 'mail', `${img}:vda`, '--json'],
      { env: env({ OUT: dir }) },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(await readFile(join(dir, 'in.json'), 'utf8'))).toEqual(JSON.parse(r.stdout));
    expect(r.stdout).not.toContain('said-by-the-hook');
    expect(r.stderr).toContain('said-by-the-hook');
    const vars = envOf(await readFile(join(dir, 'env.txt'), 'utf8'));
    expect(vars.VMVAULT_OUTCOME).toBe('success');
    expect(vars.VMVAULT_COMMAND).toBe('backup-image');
    expect(vars.VMVAULT_EXIT_CODE).toBe('0');
    expect(vars.VMVAULT_REPO).toBe(repo);
    expect(vars.VMVAULT_VMS).toBe('mail');
    expect(vars.VMVAULT_MESSAGE).toBe('');
    expect(Number(vars.VMVAULT_DURATION_SECONDS)).toBeGreaterThan(0);
    expect(vars.VMVAULT_PASSWORD).toBeUndefined();
    expect(vars.AWS_SECRET_ACCESS_KEY).toBeUndefined();
    expect(vars.OUT).toBe(dir); // the rest of the environment is inherited

    // Without --json the hook reads the same summary --json would have printed.
    const plain = await runCli(['--notify-command', hook, 'backup-image', '-r', repo, '--vm', 'mail', img], {
      env: env({ OUT: dir }),
    });
    expect(plain.code, plain.stderr).toBe(0);
    const s = JSON.parse(await readFile(join(dir, 'in.json'), 'utf8')) as Summary;
    expect(s).toMatchObject({ message_type: 'summary', vm: 'mail' });
    expect(plain.stdout).toContain(`snapshot ${s.snapshot.slice(0, 8)} saved (mail, 1 disk)`);
  });

  it('--notify-command on a failed run: outcome failure, the exit_error object on stdin, the exit code kept', async () => {
    const hook = `cat > "$OUT/in.json"; env -0 > "$OUT/env.txt"`;
    const r = await runCli(
      ['--notify-command', hook, 'backup-image', '-r', repo, '--vm', 'mail', join(dir, 'gone.raw'), '--json'],
      { env: env({ OUT: dir }) },
    );
    expect(r.code).toBe(1);
    const exitError = JSON.parse(r.stderr.trim().split('\n').at(-1)!) as Record<string, unknown>;
    expect(exitError.message_type).toBe('exit_error');
    expect(JSON.parse(await readFile(join(dir, 'in.json'), 'utf8'))).toEqual(exitError);
    const vars = envOf(await readFile(join(dir, 'env.txt'), 'utf8'));
    expect(vars.VMVAULT_OUTCOME).toBe('failure');
    expect(vars.VMVAULT_EXIT_CODE).toBe('1');
    expect(vars.VMVAULT_MESSAGE).toMatch(/^cannot read image .*gone\.raw/);
    expect([outcomeOf(0), outcomeOf(3), outcomeOf(1), outcomeOf(20), outcomeOf(143)]).toEqual([
      'success',
      'partial',
      'failure',
      'failure',
      'failure',
    ]);
  });

  it('a failing notify command warns (also in the log) and leaves the exit code alone', async () => {
    const log = join(dir, 'hook.log');
    const ok = await runCli(
      ['--log-file', log, '--notify-command', 'exit 7', 'backup-image', '-r', repo, '--vm', 'h', img],
      {
        env: env(),
      },
    );
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stderr).toMatch(/^warning: the notify command failed \(exit code 7\)$/m);
    expect(await readFile(log, 'utf8')).toMatch(/backup-image: the notify command failed \(exit code 7\)\n$/);
    const failed = await runCli(
      ['--notify-command', 'exit 7', 'backup-image', '-r', repo, '--vm', 'h', join(dir, 'gone.raw')],
      {
        env: env(),
      },
    );
    expect(failed.code).toBe(1);
    expect(failed.stderr).toMatch(/^warning: the notify command failed \(exit code 7\)$/m);
  });

  it('a hanging notify command is stopped after --notify-timeout, with what it started in the background', async () => {
    const pidFile = join(dir, 'bg.pid');
    // A background child that ignores SIGTERM, and a shell that waits: both must go.
    const hook = `(trap '' TERM; exec sleep 60) & echo $! > "${pidFile}"; sleep 60`;
    const t0 = Date.now();
    const r = await runCli(
      ['--notify-timeout', '1', '--notify-command', hook, 'backup-image', '-r', repo, '--vm', 'h', img],
      {
        env: env(),
      },
    );
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^warning: the notify command took longer than 1 s and was stopped$/m);
    expect(Date.now() - t0).toBeLessThan(20_000);
    const pid = Number((await readFile(pidFile, 'utf8')).trim());
    expect(await processState(pid)).toMatch(/^(gone|Z)$/); // a zombie when no init reaps it
  });

  it('--metrics-file: Prometheus text format, per-run and per-VM series; a failed run keeps the last success; labels escaped', async () => {
    const mdir = join(dir, 'textfile');
    await mkdir(mdir);
    const file = join(mdir, 'vmvault.prom');
    const vm = 'we"b\\x';
    const backup = (src: string, name = vm): ReturnType<typeof runCli> =>
      runCli(['--metrics-file', file, 'backup-image', '-r', repo, '--vm', name, `${src}:vda`, '--json'], {
        env: env(),
      });

    const t0 = Date.now() / 1000;
    const a = await backup(img);
    expect(a.code, a.stderr).toBe(0);
    const s = JSON.parse(a.stdout) as Summary;
    const other = await backup(img, 'other');
    expect(other.code, other.stderr).toBe(0);
    const text1 = await readFile(file, 'utf8');
    const fams = promParse(text1);
    // Every family has its HELP and TYPE before its samples.
    for (const f of fams) {
      expect(f.type).toBe('gauge');
      expect(f.help.length).toBeGreaterThan(0);
      expect(text1.indexOf(`# TYPE ${f.name} gauge`)).toBeLessThan(text1.indexOf(`\n${f.name}{`));
    }
    const run = { command: 'backup-image', repo };
    const per = { ...run, vm };
    const success1 = sample(fams, 'vmvault_backup_last_success_timestamp_seconds', per)!;
    expect(success1).toBeGreaterThanOrEqual(Math.floor(t0));
    expect(success1).toBeLessThanOrEqual(Date.now() / 1000);
    expect(sample(fams, 'vmvault_backup_last_run_success', per)).toBe(1);
    expect(sample(fams, 'vmvault_backup_duration_seconds', per)).toBeGreaterThan(0);
    const sum = (k: 'bytesNew' | 'bytesStored' | 'bytesRead' | 'sizeBytes'): number =>
      s.disks.reduce((n, d) => n + d[k], 0);
    expect(sample(fams, 'vmvault_backup_new_bytes', per)).toBe(sum('bytesNew'));
    expect(sample(fams, 'vmvault_backup_stored_bytes', per)).toBe(sum('bytesStored'));
    expect(sample(fams, 'vmvault_backup_read_bytes', per)).toBe(sum('bytesRead'));
    expect(sample(fams, 'vmvault_backup_size_bytes', per)).toBe(4 * MiB);
    expect(sample(fams, 'vmvault_last_run_success', run)).toBe(1);
    expect(sample(fams, 'vmvault_last_run_exit_code', run)).toBe(0);
    expect(sample(fams, 'vmvault_last_run_duration_seconds', run)).toBeGreaterThan(0);
    expect(sample(fams, 'vmvault_last_success_timestamp_seconds', run)).toBeGreaterThanOrEqual(success1);
    expect(
      sample(fams, 'vmvault_backup_last_success_timestamp_seconds', { ...run, vm: 'other' }),
    ).toBeDefined();
    // The escapes as written: backslash, double quote and newline.
    expect(text1).toContain(`vm="we\\"b\\\\x"`);
    expect(text1).toContain(`repo="${escapeLabelValue(repo)}"`);
    expect(text1).toMatch(/repo="[^"\n]*r\\"e\\\\p\\no\/repo"/);

    const failed = await backup(join(dir, 'gone.raw'));
    expect(failed.code).toBe(1);
    const fams2 = promParse(await readFile(file, 'utf8'));
    expect(sample(fams2, 'vmvault_backup_last_success_timestamp_seconds', per)).toBe(success1);
    expect(sample(fams2, 'vmvault_backup_last_run_success', per)).toBe(0);
    expect(sample(fams2, 'vmvault_backup_last_run_timestamp_seconds', per)).toBeGreaterThan(success1);
    expect(sample(fams2, 'vmvault_backup_new_bytes', per)).toBe(sum('bytesNew')); // of the last saved backup
    expect(sample(fams2, 'vmvault_last_run_success', run)).toBe(0);
    expect(sample(fams2, 'vmvault_last_run_exit_code', run)).toBe(1);
    expect(sample(fams2, 'vmvault_last_success_timestamp_seconds', run)).toBe(
      sample(fams, 'vmvault_last_success_timestamp_seconds', run),
    );
    expect(sample(fams2, 'vmvault_backup_last_run_success', { ...run, vm: 'other' })).toBe(1); // untouched
    // Written by rename: no temporary or lock file is left for the collector to see.
    expect(await readdir(mdir)).toEqual(['vmvault.prom']);

    // A name vmvault refuses (usage error) never becomes a label.
    const bad = await backup(img, 'a\nb');
    expect(bad.code).toBe(2);
    expect(await readFile(file, 'utf8')).not.toMatch(/vm="a/);
  });

  it('label values survive a write and a read; a newline, quote or backslash in one cannot start a line', () => {
    const hostile = 'x"} 1\nvmvault_fake 2\\';
    const m = parseMetrics('');
    applyUpdates(m, [
      {
        name: 'vmvault_t',
        help: 'help with \\ and\nnewline',
        type: 'gauge',
        labels: { vm: hostile },
        value: 3,
      },
    ]);
    const text = formatMetrics(m);
    expect(text.split('\n').filter((l) => l.startsWith('vmvault_fake'))).toEqual([]);
    const fams = promParse(text);
    expect(fams.map((f) => f.name)).toEqual(['vmvault_t']);
    expect(fams[0]!.samples).toEqual([{ name: 'vmvault_t', labels: { vm: hostile }, value: 3 }]);
    expect(fams[0]!.help).toBe('help with \\ and\nnewline');
    const back = parseMetrics(text).get('vmvault_t')!;
    expect([...back.samples.values()][0]!.labels.vm).toBe(hostile);
  });
});

/** A process's state letter from /proc (R, S, Z, …), or 'gone'. */
async function processState(pid: number): Promise<string> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return 'gone';
  }
}

/** `env -0` output: values may hold newlines (the repository path does). */
function envOf(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of text.split('\0')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}
