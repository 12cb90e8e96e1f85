import type { Progress } from '../util/index.js';
import { formatBytes, printable } from '../util/index.js';
import { progressEvent, progressEventsWanted, type ProgressEvent } from './events.js';

export interface ProgressStyle {
  /**
   * A backup: the position in the disk and the bytes really read differ (holes, unchanged
   * ranges), so the line shows both and the rate is bytes read per second.
   */
  reads?: boolean;
  /** A word on where the work is, shown after the label on a TTY (sync: `snapshot 2/5`). */
  status?: () => string;
}

const mib = (bytesPerSecond: number): string => `${(bytesPerSecond / 1048576).toFixed(1)} MiB/s`;

/**
 * Progress on a TTY: one redrawn line with bytes, percent, rate and ETA. Not a TTY: one line at the
 * end (with the rate), nothing in between. Backups label disks `VM/disk` (live and backup-image
 * alike) and report bytes read and the read rate (bytes read / elapsed time); the ETA comes from
 * the position in the disk. Every start, advance and done is also a progress event (events.ts:
 * --log-file, --json-progress), quiet or not, TTY or not.
 */
export function makeProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
  quiet = false,
  style: ProgressStyle = {},
): Progress {
  const name = printable(label);
  let total = 0;
  let done = 0;
  let read = 0;
  let started = 0;
  let lastDraw = 0;
  const tty = stream.isTTY === true && !quiet;
  const perSecond = (n: number): number => {
    const s = (Date.now() - started) / 1000;
    return s > 0 ? n / s : 0;
  };
  const pct = (): number => (total > 0 ? Math.min(100, (done / total) * 100) : 0);
  const eta = (): number => {
    const pos = perSecond(done);
    return pos > 0 && total > done ? Math.round((total - done) / pos) : 0;
  };
  const figures = (): string =>
    style.reads
      ? `${formatBytes(done)}/${formatBytes(total)}, read ${formatBytes(read)} ${mib(perSecond(read))}`
      : `${formatBytes(done)}/${formatBytes(total)} ${mib(perSecond(done))}`;
  const where = (): string => {
    const w = style.status?.() ?? '';
    return w ? ` ${w}` : '';
  };
  const draw = (final: boolean): void => {
    const width = 24;
    const fill = Math.round((pct() / 100) * width);
    const bar = '#'.repeat(fill) + '-'.repeat(width - fill);
    const line = `${name}${where()} [${bar}] ${pct().toFixed(0).padStart(3)}% ${figures()}${final ? '' : ` ETA ${eta()}s`}`;
    stream.write(`\r${line.padEnd(Math.min(stream.columns ?? 100, 120) - 1)}${final ? '\n' : ''}`);
  };
  /** The line a stream that is not a TTY gets at the end (and the log file's done line). */
  const doneLine = (): string => {
    const secs = ((Date.now() - started) / 1000).toFixed(1);
    return style.reads
      ? `${name}: read ${formatBytes(read)} of ${formatBytes(total)} in ${secs} s (${mib(perSecond(read))})`
      : `${name}: ${formatBytes(done)} in ${secs} s (${mib(perSecond(done))})`;
  };
  const emit = (event: ProgressEvent['event']): void => {
    if (!progressEventsWanted()) return;
    const text = (): string =>
      event === 'start'
        ? `${name}${where()}: started, ${formatBytes(total)}`
        : event === 'update'
          ? `${name}${where()}: ${pct().toFixed(0)}% ${figures()} ETA ${eta()}s`
          : doneLine();
    progressEvent({
      event,
      label,
      totalBytes: total,
      doneBytes: done,
      readBytes: read,
      elapsedSeconds: (Date.now() - started) / 1000,
      text,
    });
  };
  return {
    start(_l, totalBytes) {
      total = totalBytes;
      done = 0;
      read = 0;
      started = Date.now();
      if (tty) draw(false);
      emit('start');
    },
    advance(bytes, readBytes = bytes) {
      done += bytes;
      read += readBytes;
      if (tty && Date.now() - lastDraw > 200) {
        lastDraw = Date.now();
        draw(false);
      }
      emit('update');
    },
    done() {
      if (tty) draw(true);
      else if (!quiet) stream.write(`${doneLine()}\n`);
      emit('done');
    },
  };
}
