import type { Progress } from '../util/index.js';
import { formatBytes, printable } from '../util/index.js';

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
 * the position in the disk.
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
  const draw = (final: boolean): void => {
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 0;
    const pos = perSecond(done);
    const eta = pos > 0 && total > done ? Math.round((total - done) / pos) : 0;
    const width = 24;
    const fill = Math.round((pct / 100) * width);
    const bar = '#'.repeat(fill) + '-'.repeat(width - fill);
    const figures = style.reads
      ? `${formatBytes(done)}/${formatBytes(total)}, read ${formatBytes(read)} ${mib(perSecond(read))}`
      : `${formatBytes(done)}/${formatBytes(total)} ${mib(pos)}`;
    const where = style.status?.() ?? '';
    const line = `${name}${where ? ` ${where}` : ''} [${bar}] ${pct.toFixed(0).padStart(3)}% ${figures}${final ? '' : ` ETA ${eta}s`}`;
    stream.write(`\r${line.padEnd(Math.min(stream.columns ?? 100, 120) - 1)}${final ? '\n' : ''}`);
  };
  return {
    start(_l, totalBytes) {
      total = totalBytes;
      done = 0;
      read = 0;
      started = Date.now();
      if (tty) draw(false);
    },
    advance(bytes, readBytes = bytes) {
      done += bytes;
      read += readBytes;
      if (tty && Date.now() - lastDraw > 200) {
        lastDraw = Date.now();
        draw(false);
      }
    },
    done() {
      if (tty) draw(true);
      else if (!quiet) {
        const secs = ((Date.now() - started) / 1000).toFixed(1);
        stream.write(
          style.reads
            ? `${name}: read ${formatBytes(read)} of ${formatBytes(total)} in ${secs} s (${mib(perSecond(read))})\n`
            : `${name}: ${formatBytes(done)} in ${secs} s (${mib(perSecond(done))})\n`,
        );
      }
    },
  };
}
