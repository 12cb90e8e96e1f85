import { Command } from 'commander';
import { UsageError, formatBytes, printable } from '../../util/index.js';
import {
  runBenchmark,
  type BenchmarkFigure,
  type BenchmarkOptions,
  type BenchmarkResult,
} from '../../repo/index.js';
import { openBackendFor, openRepo, printJson, repoOption } from '../context.js';
import { rootAbort } from '../signals.js';

interface BenchmarkFlags {
  repo?: string;
  json?: boolean;
  seconds: string;
}

function parseSeconds(text: string): number {
  const s = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(s > 0 && s <= 60))
    throw new UsageError(`invalid --seconds '${printable(text, 40)}'`, 'give a time from 0.01 to 60, e.g. 1');
  return s;
}

function rate(f: BenchmarkFigure | undefined): string {
  return f === undefined ? '' : `${f.mbPerSec.toFixed(f.mbPerSec < 100 ? 1 : 0)} MB/s`;
}

function table(r: BenchmarkResult): string {
  const rows: string[][] = [['step', 'what', '1 thread', `${r.workers} threads`]];
  const steps = [...new Set(r.figures.map((f) => f.step))];
  for (const step of steps) {
    const fs = r.figures.filter((f) => f.step === step);
    const one = fs.find((f) => f.threads === 1 && f.step !== 'write' && f.step !== 'read');
    const all = fs.find((f) => f.threads === r.workers || f.step === 'write' || f.step === 'read');
    const what =
      fs[0]!.ratio !== undefined ? `${fs[0]!.label} (ratio ${fs[0]!.ratio.toFixed(2)})` : fs[0]!.label;
    rows.push([step, what, one === all && r.workers !== 1 ? '' : rate(one), rate(all)]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  return rows
    .map((row) =>
      row
        .map((c, i) => (i >= 2 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export function benchmarkCommand(): Command {
  return new Command('benchmark')
    .description(
      "how fast this machine hashes, compresses and encrypts as a backup does, and with -r how fast the repository's storage writes and reads",
    )
    .option('--seconds <s>', 'measuring time of each figure', '1')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (opts: BenchmarkFlags) => {
      const seconds = parseSeconds(opts.seconds);
      let config: BenchmarkOptions['config'];
      let location: string | undefined;
      if (opts.repo !== undefined && opts.repo !== '') {
        // The repository's settings (its password too: the benchmark writes into it).
        const repo = await openRepo(opts, 'read');
        config = repo.config;
        location = repo.location;
        await repo.close();
      }
      const backend = location !== undefined ? openBackendFor(opts.repo!, 'write') : undefined;
      if (!opts.json && process.stderr.isTTY)
        process.stderr.write(`measuring (about ${seconds} s per figure)…\n`);
      let result: BenchmarkResult;
      try {
        result = await runBenchmark({
          seconds,
          signal: rootAbort.signal,
          ...(config !== undefined ? { config } : {}),
          ...(backend !== undefined ? { backend } : {}),
        });
      } finally {
        await backend?.close().catch(() => {});
      }
      if (rootAbort.signal.aborted) return;
      if (opts.json) return printJson(result);
      const st = result.storage;
      process.stdout.write(
        [
          `CPUs          ${result.cpus} (${printable(result.cpuModel, 80)}); a backup uses ${result.workers} worker thread${result.workers === 1 ? '' : 's'}`,
          `settings      ${location !== undefined ? `of ${printable(location, 200)}` : 'of a new repository'}: chunks of ${formatBytes(result.chunkSizeBytes)}, ${result.idFunction}, ${result.compressionLevel === 0 ? 'no compression' : `zstd level ${result.compressionLevel}`}, ${result.encrypted ? 'encrypted' : 'not encrypted'}`,
          ...(st
            ? [
                `storage       ${formatBytes(st.objectBytes)} objects, ${st.concurrency} in flight (deleted afterwards)`,
              ]
            : []),
          '',
          table(result),
          '',
        ].join('\n'),
      );
    });
}
