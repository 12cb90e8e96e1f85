import { closeSync, openSync, writeSync } from 'node:fs';
import { printable } from '../util/index.js';

/**
 * What a run reports besides its terminal output (docs/cli.md "Logs, notifications and metrics"):
 * `--log-file` (one timestamped line per event, appended) and `--json-progress` (one JSON object
 * per progress event on stderr). Both hear the same events whether or not stderr is a TTY and
 * whatever --quiet or --json silence on the terminal. The summary a command produced (the object
 * `--json` prints) and the error it ended with are kept here for the notify command and the
 * metrics file (after-run.ts).
 */

/** One progress event of one task (a disk, a phase): the figures the progress line shows. */
export interface ProgressEvent {
  event: 'start' | 'update' | 'done';
  label: string;
  totalBytes: number;
  doneBytes: number;
  readBytes: number;
  elapsedSeconds: number;
  /** The words the progress line shows (the same in the log file); made only when logged. */
  text: () => string;
}

interface Sink {
  logFd?: number;
  jsonProgress: boolean;
  command: string;
}

const sink: Sink = { jsonProgress: false, command: 'vmvault' };

/** Log lines of one task's progress between its start and done: at most one per this many ms. */
const LOG_UPDATE_MS = 30_000;
/** JSON progress updates: at most one per task per this many ms. */
const JSON_UPDATE_MS = 1000;

export interface EventOptions {
  logFile?: string;
  jsonProgress?: boolean;
  command: string;
}

/**
 * Opens the log file (appending, created 0640) and turns on JSON progress. Throws the open's
 * error (the caller names the option).
 */
export function startEvents(o: EventOptions): void {
  sink.command = o.command;
  sink.jsonProgress = o.jsonProgress === true;
  if (o.logFile !== undefined) sink.logFd = openSync(o.logFile, 'a', 0o640);
}

/** True when someone listens to progress events although stderr may not be a TTY. */
export function progressEventsWanted(): boolean {
  return sink.logFd !== undefined || sink.jsonProgress;
}

/** One line into the log file: `TIME vmvault[PID] COMMAND: TEXT` (control characters escaped). */
export function logLine(text: string): void {
  if (sink.logFd === undefined) return;
  const line = `${new Date().toISOString()} vmvault[${process.pid}] ${sink.command}: ${printable(text, 4000)}\n`;
  try {
    writeSync(sink.logFd, line);
  } catch (err) {
    // A full disk must not end the backup: stop logging, say so once.
    const fd = sink.logFd;
    sink.logFd = undefined;
    closeQuietly(fd);
    process.stderr.write(
      `warning: ${printable(`cannot write the log file: ${(err as Error).message}`, 400)}\n`,
    );
  }
}

/** Closes the log file (end of the run). */
export function stopEvents(): void {
  if (sink.logFd !== undefined) closeQuietly(sink.logFd);
  sink.logFd = undefined;
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // nothing to do
  }
}

const lastLogAt = new Map<string, number>();
const lastJsonAt = new Map<string, number>();

/** A progress event: a log line (start, done, and every 30 s between) and a JSON line (every second). */
export function progressEvent(e: ProgressEvent): void {
  const now = Date.now();
  if (sink.logFd !== undefined) {
    if (e.event !== 'update' || now - (lastLogAt.get(e.label) ?? 0) >= LOG_UPDATE_MS) {
      logLine(e.text());
      lastLogAt.set(e.label, now);
    }
  }
  if (sink.jsonProgress) {
    if (e.event === 'update' && now - (lastJsonAt.get(e.label) ?? 0) < JSON_UPDATE_MS) return;
    lastJsonAt.set(e.label, now);
    const rate = e.elapsedSeconds > 0 ? e.readBytes / e.elapsedSeconds : 0;
    const posRate = e.elapsedSeconds > 0 ? e.doneBytes / e.elapsedSeconds : 0;
    const eta =
      posRate > 0 && e.totalBytes > e.doneBytes ? Math.round((e.totalBytes - e.doneBytes) / posRate) : 0;
    process.stderr.write(
      `${JSON.stringify({
        message_type: 'progress',
        command: sink.command,
        event: e.event,
        time: new Date(now).toISOString(),
        label: e.label,
        total_bytes: e.totalBytes,
        done_bytes: e.doneBytes,
        read_bytes: e.readBytes,
        percent: e.totalBytes > 0 ? Math.min(100, Math.round((e.doneBytes / e.totalBytes) * 1000) / 10) : 0,
        elapsed_seconds: Math.round(e.elapsedSeconds * 1000) / 1000,
        bytes_per_second: Math.round(rate),
        eta_seconds: e.event === 'done' ? 0 : eta,
      })}\n`,
    );
  }
}

/** The end of a command as the notify command and the metrics file see it. */
export interface RunRecord {
  /** The object `--json` prints (or would print), once the command got that far. */
  summary?: unknown;
  /** The error the command ended with (the `exit_error` object of --json). */
  error?: { message_type: 'exit_error'; code: string; exit_code: number; message: string };
}

export const runRecord: RunRecord = {};

/** A command's summary (what --json prints, with its s3 block), kept for after-run hooks. */
export function recordSummary(value: unknown): void {
  runRecord.summary = value;
}

export function recordError(e: NonNullable<RunRecord['error']>): void {
  runRecord.error = e;
}
