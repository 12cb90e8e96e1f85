import type { Progress } from '../util/index.js';
import { formatBytes } from '../util/index.js';

/**
 * Progress on a TTY: one redrawn line with bytes, percent, MB/s and ETA. Not a TTY: a log line at
 * start and at the end (with the rate), nothing in between.
 */
export function makeProgress(
  label: string,
  stream: NodeJS.WriteStream = process.stderr,
  quiet = false,
): Progress {
  let total = 0;
  let done = 0;
  let started = 0;
  let lastDraw = 0;
  const tty = stream.isTTY === true && !quiet;
  const rate = (): number => {
    const s = (Date.now() - started) / 1000;
    return s > 0 ? done / s : 0;
  };
  const draw = (final: boolean): void => {
    const pct = total > 0 ? Math.min(100, (done / total) * 100) : 0;
    const r = rate();
    const eta = r > 0 && total > done ? Math.round((total - done) / r) : 0;
    const width = 24;
    const fill = Math.round((pct / 100) * width);
    const bar = '#'.repeat(fill) + '-'.repeat(width - fill);
    const line = `${label} [${bar}] ${pct.toFixed(0).padStart(3)}% ${formatBytes(done)}/${formatBytes(total)} ${(r / 1048576).toFixed(1)} MiB/s${final ? '' : ` ETA ${eta}s`}`;
    stream.write(`\r${line.padEnd(Math.min(stream.columns ?? 100, 120) - 1)}${final ? '\n' : ''}`);
  };
  return {
    start(_l, totalBytes) {
      total = totalBytes;
      done = 0;
      started = Date.now();
      if (tty) draw(false);
    },
    advance(bytes) {
      done += bytes;
      if (tty && Date.now() - lastDraw > 200) {
        lastDraw = Date.now();
        draw(false);
      }
    },
    done() {
      if (tty) draw(true);
      else if (!quiet) {
        const secs = (Date.now() - started) / 1000;
        stream.write(
          `${label}: ${formatBytes(done)} in ${secs.toFixed(1)} s (${(rate() / 1048576).toFixed(1)} MiB/s)\n`,
        );
      }
    },
  };
}
