import { spawn } from 'node:child_process';
import { ExitCode, printable } from '../util/index.js';
import { logLine, runRecord, startEvents, stopEvents } from './events.js';
import { updateMetricsFile, type Labels, type MetricUpdate } from './metrics.js';

/**
 * The global options that report on a run (docs/cli.md "Logs, notifications and metrics"):
 * `--log-file`, `--json-progress`, `--notify-command` (+ `--notify-timeout`) and `--metrics-file`.
 * beginRun opens the log before the command's action; finishRun, after the exit code is known,
 * writes the metrics file and runs the notify command. Neither changes the exit code: their own
 * failures are warnings.
 */
export interface RunOptions {
  logFile?: string;
  jsonProgress?: boolean;
  notifyCommand?: string;
  notifyTimeout?: number;
  metricsFile?: string;
}

interface Run {
  /** False for runs that measure nothing (`backup --estimate`, `prune --dry-run`): no metrics. */
  measured: boolean;
  command: string;
  repo?: string;
  vms: string[];
  startedAt: number;
  o: RunOptions;
}

let run: Run | undefined;

/** Default `--notify-timeout` (seconds): the notify command is killed after this long. */
export const NOTIFY_TIMEOUT_S = 60;

/**
 * A repository location without secrets: no user or password of a URL (`//user:pw@host`), no
 * query or fragment. What VMVAULT_REPO, the log and the metrics' `repo` label show.
 */
export function redactLocation(location: string): string {
  return location.replace(/^([^?#]*?\/\/)[^/@?#]*@/, '$1').replace(/[?#].*$/, '');
}

export function beginRun(r: {
  command: string;
  repo?: string;
  vms: string[];
  measured?: boolean;
  options: RunOptions;
}): void {
  startEvents({
    command: r.command,
    ...(r.options.logFile === undefined ? {} : { logFile: r.options.logFile }),
    jsonProgress: r.options.jsonProgress === true,
  });
  run = {
    measured: r.measured ?? true,
    command: r.command,
    ...(r.repo ? { repo: redactLocation(r.repo) } : {}),
    vms: r.vms,
    startedAt: Date.now(),
    o: r.options,
  };
  logLine(
    `started${run.repo ? ` (repository ${run.repo})` : ''}${r.vms.length ? ` for ${r.vms.join(', ')}` : ''}`,
  );
}

export type Outcome = 'success' | 'partial' | 'failure';

export function outcomeOf(code: number): Outcome {
  return code === ExitCode.OK ? 'success' : code === ExitCode.PARTIAL ? 'partial' : 'failure';
}

const warn = (m: string): void => void process.stderr.write(`warning: ${printable(m, 400)}\n`);

/** After the command: log its end, write the metrics file, run the notify command. */
export async function finishRun(code: number): Promise<void> {
  const r = run;
  if (!r) return;
  run = undefined;
  const endedAt = Date.now();
  const secs = (endedAt - r.startedAt) / 1000;
  const outcome = outcomeOf(code);
  if (runRecord.summary !== undefined) logLine(`summary ${JSON.stringify(runRecord.summary)}`);
  logLine(
    `finished: ${outcome}, exit code ${code}, ${secs.toFixed(1)} s${runRecord.error ? `: ${runRecord.error.message}` : ''}`,
  );
  if (r.o.metricsFile !== undefined && r.measured) {
    try {
      await updateMetricsFile(r.o.metricsFile, metricUpdates(r, code, endedAt), warn);
    } catch (err) {
      warn(`cannot write the metrics file ${r.o.metricsFile}: ${(err as Error).message}`);
      logLine(`cannot write the metrics file: ${(err as Error).message}`);
    }
  }
  if (r.o.notifyCommand !== undefined) {
    const result = await runNotify(r, code, secs, r.o.notifyCommand, r.o.notifyTimeout ?? NOTIFY_TIMEOUT_S);
    if (result) {
      warn(`the notify command ${result}`);
      logLine(`the notify command ${result}`);
    }
  }
  stopEvents();
}

/** The JSON the notify command reads: the summary, else the error, else a bare summary. */
function notifyInput(r: Run, code: number): unknown {
  return (
    runRecord.summary ?? runRecord.error ?? { message_type: 'summary', command: r.command, exit_code: code }
  );
}

/** Variables the notify command does not inherit (docs/cli.md "Logs, notifications and metrics"). */
export function isSecretVariable(name: string): boolean {
  return (
    (name.startsWith('VMVAULT_') && name.includes('PASSWORD')) ||
    name === 'AWS_SECRET_ACCESS_KEY' ||
    name === 'AWS_SESSION_TOKEN'
  );
}

/** Runs the notify command; resolves with what went wrong (undefined: exit 0 in time). */
function runNotify(
  r: Run,
  code: number,
  secs: number,
  cmd: string,
  timeoutS: number,
): Promise<string | undefined> {
  const env: NodeJS.ProcessEnv = {};
  // No secret goes to the hook: none of vmvault's password variables, no S3 secret key.
  for (const [k, v] of Object.entries(process.env)) if (!isSecretVariable(k)) env[k] = v;
  Object.assign(env, {
    VMVAULT_OUTCOME: outcomeOf(code),
    VMVAULT_COMMAND: r.command,
    VMVAULT_EXIT_CODE: String(code),
    VMVAULT_REPO: r.repo ?? '',
    VMVAULT_VMS: r.vms.join(','),
    VMVAULT_DURATION_SECONDS: secs.toFixed(3),
    VMVAULT_MESSAGE: runRecord.error?.message ?? '',
  });
  return new Promise((resolve) => {
    // Its output goes to stderr: stdout may be a --json summary that another program reads.
    const child = spawn('/bin/sh', ['-c', cmd], { env, stdio: ['pipe', 2, 2], detached: true });
    let timedOut = false;
    const killGroup = (sig: NodeJS.Signals): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, sig);
      } catch {
        // already gone
      }
    };
    let hardKill: NodeJS.Timeout | undefined;
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup('SIGTERM');
      hardKill = setTimeout(() => killGroup('SIGKILL'), 2000);
    }, timeoutS * 1000);
    child.on('error', (err) => {
      clearTimeout(timer);
      resolve(`could not be started: ${err.message}`);
    });
    child.on('close', (exit, signal) => {
      clearTimeout(timer);
      if (hardKill) clearTimeout(hardKill);
      // The shell is gone, but what it started in the background may ignore SIGTERM: the whole
      // group goes now (while a member lives, its id cannot be reused).
      if (timedOut) killGroup('SIGKILL');
      if (timedOut) resolve(`took longer than ${timeoutS} s and was stopped`);
      else if (exit !== 0) resolve(exit === null ? `was killed by ${signal}` : `failed (exit code ${exit})`);
      else resolve(undefined);
    });
    // A hook that does not read its input is fine: EPIPE is no failure of it.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(`${JSON.stringify(notifyInput(r, code))}\n`);
  });
}

interface VmFigures {
  success: boolean;
  /** Seconds this VM's backup took (backup's per-domain figure; the run's for a single VM). */
  seconds?: number;
  /** The bytes of its disks, when the run saved a snapshot of it. */
  bytes?: { read: number; new: number; stored: number; size: number };
}

/**
 * Per VM: did its part succeed, how long it took, and its bytes (a backup's summary: one object,
 * or a list by domain). A VM with an `error` failed; one skipped by `--threshold` succeeded
 * without bytes.
 */
function vmFigures(vms: string[], code: number, runSeconds: number): Map<string, VmFigures> {
  const out = new Map<string, VmFigures>();
  const entries = Array.isArray(runRecord.summary) ? runRecord.summary : [runRecord.summary];
  const byVm = new Map<string, Record<string, unknown>>();
  for (const e of entries) {
    if (typeof e !== 'object' || e === null) continue;
    const o = e as Record<string, unknown>;
    const name = typeof o.vm === 'string' ? o.vm : typeof o.domain === 'string' ? o.domain : undefined;
    if (name !== undefined) byVm.set(name, o);
  }
  const all = new Set([...vms, ...byVm.keys()]);
  for (const vm of all) {
    const e = byVm.get(vm);
    const success = code === ExitCode.OK || (e !== undefined && !('error' in e));
    const f: VmFigures = { success };
    if (e && typeof e.durationSeconds === 'number') f.seconds = e.durationSeconds;
    else if (all.size === 1) f.seconds = runSeconds;
    if (success && e && typeof e.snapshot === 'string' && Array.isArray(e.disks)) {
      const sum = (k: string): number =>
        (e.disks as unknown[]).reduce<number>((a, d) => {
          const v = typeof d === 'object' && d !== null ? (d as Record<string, unknown>)[k] : undefined;
          return a + (typeof v === 'number' && Number.isFinite(v) ? v : 0);
        }, 0);
      f.bytes = {
        read: sum('bytesRead'),
        new: sum('bytesNew'),
        stored: sum('bytesStored'),
        size: sum('sizeBytes'),
      };
    }
    out.set(vm, f);
  }
  return out;
}

/**
 * The series a run sets: one set per run (labels `command`, `repo`) and, for backups, one per VM
 * (plus `vm`). A series is only ever replaced by the next run with the same labels, so
 * `vmvault_last_success_timestamp_seconds` keeps its value through failed runs.
 */
export function metricUpdates(
  r: { command: string; repo?: string; vms: string[]; startedAt: number },
  code: number,
  endedAt: number,
): MetricUpdate[] {
  const base: Labels = { command: r.command, ...(r.repo ? { repo: r.repo } : {}) };
  const secs = (endedAt - r.startedAt) / 1000;
  const ok = code === ExitCode.OK;
  const updates: MetricUpdate[] = [
    g('vmvault_last_run_timestamp_seconds', 'When the last run ended (Unix time).', base, endedAt / 1000),
    g('vmvault_last_run_duration_seconds', 'How long the last run took.', base, secs),
    g('vmvault_last_run_exit_code', "The last run's exit code (docs/cli.md).", base, code),
    g('vmvault_last_run_success', '1 if the last run succeeded, else 0.', base, ok ? 1 : 0),
    ...(ok ? [lastSuccess(base, endedAt)] : []),
  ];
  for (const [vm, f] of vmFigures(r.vms, code, secs)) {
    const labels = { ...base, vm };
    updates.push(
      g(
        'vmvault_backup_last_run_timestamp_seconds',
        "When the VM's last backup run ended (Unix time).",
        labels,
        endedAt / 1000,
      ),
      g(
        'vmvault_backup_last_run_success',
        "1 if the VM's last backup succeeded, else 0.",
        labels,
        f.success ? 1 : 0,
      ),
    );
    if (f.seconds !== undefined)
      updates.push(
        g('vmvault_backup_duration_seconds', "How long the VM's last backup took.", labels, f.seconds),
      );
    if (f.success)
      updates.push(
        g(
          'vmvault_backup_last_success_timestamp_seconds',
          "When the VM's last successful backup ended (Unix time).",
          labels,
          endedAt / 1000,
        ),
      );
    if (f.bytes)
      updates.push(
        g('vmvault_backup_read_bytes', "Bytes the VM's last saved backup read.", labels, f.bytes.read),
        g(
          'vmvault_backup_new_bytes',
          "Bytes of new data in the VM's last saved backup (before compression).",
          labels,
          f.bytes.new,
        ),
        g(
          'vmvault_backup_stored_bytes',
          "Bytes the VM's last saved backup added to the repository (compressed).",
          labels,
          f.bytes.stored,
        ),
        g(
          'vmvault_backup_size_bytes',
          "Virtual size of the VM's disks in its last saved backup.",
          labels,
          f.bytes.size,
        ),
      );
  }
  return updates;
}

function lastSuccess(labels: Labels, endedAt: number): MetricUpdate {
  return g(
    'vmvault_last_success_timestamp_seconds',
    'When the last successful run ended (Unix time).',
    labels,
    endedAt / 1000,
  );
}

function g(name: string, help: string, labels: Labels, value: number): MetricUpdate {
  return { name, help, type: 'gauge', labels, value };
}
