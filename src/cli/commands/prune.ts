import { Command } from 'commander';
import { formatBytes, parseTimeSpan, printable, UsageError } from '../../util/index.js';
import { prune, type PrunePhase, type PruneResult, type Repository } from '../../repo/index.js';
import { keepSummary, printJson, repoOption, testSessionTtlMs, warnLine, withRepo } from '../context.js';
import { progressEventsWanted } from '../events.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

export interface PruneCliOptions {
  dryRun?: boolean;
  maxUnused?: string;
  grace?: string;
}

/** `--max-unused 10` or `10%`: a percentage from 0 to 100. */
export function parseMaxUnused(v: string | undefined): number {
  if (v === undefined) return 10;
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(v.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!Number.isFinite(n) || n < 0 || n > 100)
    throw new UsageError(
      `--max-unused must be a percentage from 0 to 100, not '${printable(v, 40)}'`,
      'for example --max-unused 10%',
    );
  return n;
}

/** `--grace 1h`, `30m`, `0`. */
export function parseGrace(v: string | undefined): number {
  if (v === undefined) return 3600_000;
  if (/^0+[a-z]?$/.test(v.trim())) return 0;
  return parseTimeSpan(v, '--grace');
}

const PHASE_LABEL: Partial<Record<PrunePhase, string>> = {
  mark: 'prune: marking snapshots',
  repack: 'prune: repacking',
  delete: 'prune: deleting packs',
};

/** Runs prune on an open repository (also `forget --prune`). */
export async function runPrune(repo: Repository, o: PruneCliOptions): Promise<PruneResult> {
  const tty = process.stderr.isTTY === true;
  let current: { phase: PrunePhase; p: ReturnType<typeof makeProgress>; at: number } | undefined;
  const testPhase = process.env.VMVAULT_TEST_PRUNE_STOP_AT as PrunePhase | undefined;
  return prune(repo, {
    dryRun: o.dryRun === true,
    maxUnusedPercent: parseMaxUnused(o.maxUnused),
    graceMs: parseGrace(o.grace),
    ...(testSessionTtlMs() !== undefined ? { expiredAfterMs: testSessionTtlMs()! } : {}),
    signal: rootAbort.signal,
    // Progress events (--log-file, --json-progress) also without a TTY.
    ...(tty || progressEventsWanted()
      ? {
          progress: (phase: PrunePhase, done: number, total: number) => {
            if (!current || current.phase !== phase) {
              current?.p.done();
              const p = makeProgress(PHASE_LABEL[phase] ?? `prune: ${phase}`, process.stderr, !tty);
              p.start(PHASE_LABEL[phase] ?? phase, total);
              current = { phase, p, at: 0 };
            }
            current.p.advance(done - current.at);
            current.at = done;
          },
        }
      : {}),
    // Test-only (docs/cli.md): stop dead at the start of a phase, as a kill there would.
    ...(testPhase
      ? {
          onPhase: (phase: PrunePhase) => {
            if (phase === testPhase) process.kill(process.pid, 'SIGKILL');
          },
        }
      : {}),
  }).finally(() => current?.p.done());
}

export function pruneJson(r: PruneResult): Record<string, unknown> {
  return {
    dryRun: r.dryRun,
    ...(r.mark ? { mark: r.mark } : {}),
    condemned: r.condemned ?? null,
    deleted: r.deleted,
    freedBytes: r.freedBytes,
    compacted: r.compacted ?? null,
    waiting: r.waiting ?? null,
    ...(r.objectLock ? { objectLock: r.objectLock } : {}),
    warnings: r.warnings,
  };
}

export function printPruneSummary(r: PruneResult): void {
  const out = process.stdout;
  for (const w of r.warnings) warnLine(w);
  if (r.mark) {
    const m = r.mark;
    out.write(
      `marked ${m.snapshots} snapshot${m.snapshots === 1 ? '' : 's'}: ${m.liveIds} chunks and pages in use, ` +
        `${formatBytes(m.liveBytes)} of ${formatBytes(m.packBytes)} in ${m.packs} packs\n`,
    );
  }
  if (r.condemned) {
    const c = r.condemned;
    out.write(
      `${r.dryRun ? 'would condemn' : 'condemned'} ${c.packs} pack${c.packs === 1 ? '' : 's'} (${formatBytes(c.bytes)})` +
        (c.repackedPacks > 0
          ? `, ${r.dryRun ? 'after repacking' : 'after copying'} ${formatBytes(c.repackedBytes)} still in use from ${c.repackedPacks} of them` +
            (r.dryRun ? '' : ` into ${c.newPacks} new`)
          : '') +
        '\n',
    );
  } else if (!r.waiting && r.deleted.length === 0) out.write('nothing to prune\n');
  for (const d of r.deleted)
    out.write(
      `deleted ${d.packs} pack${d.packs === 1 ? '' : 's'} (${formatBytes(d.bytes)}) of generation ${d.generation}` +
        (d.uncondemned > 0 ? `; kept ${d.uncondemned} a snapshot committed meanwhile needs` : '') +
        '\n',
    );
  if (r.waiting && !r.dryRun) {
    out.write(
      `generation ${r.waiting.generation}: deletion waits: ${printable(r.waiting.reasons.join('; '), 600)}\n`,
    );
    out.write(
      "run 'vmvault prune' again later: it deletes what is condemned once nothing may still use it\n",
    );
  }
  if (r.waiting && r.dryRun)
    out.write(
      `generation ${r.waiting.generation} is condemned and not yet deleted; a prune finishes it first\n`,
    );
  if (r.compacted)
    out.write(
      `merged ${r.compacted.objects} chunk index objects (${r.compacted.entries} entries) into a ${r.compacted.kind}\n`,
    );
  if (!r.dryRun) out.write(`freed ${formatBytes(r.freedBytes)}\n`);
  const l = r.objectLock;
  if (l) {
    const would = r.dryRun ? 'would ' : '';
    if (l.extendedRound)
      out.write(
        `Object Lock: ${would}extend the retention of ${l.extended} object${l.extended === 1 ? '' : 's'} to ${new Date(l.extendedUntilMs ?? 0).toISOString()}\n`,
      );
    if (l.purgedVersions > 0 || l.deleteMarkersRemoved > 0)
      out.write(
        `Object Lock: ${would}remove ${l.purgedVersions} old version${l.purgedVersions === 1 ? '' : 's'} (${formatBytes(l.purgedBytes)}) and ${l.deleteMarkersRemoved} delete marker${l.deleteMarkersRemoved === 1 ? '' : 's'}\n`,
      );
    if (l.lockedVersions > 0)
      out.write(
        `Object Lock: ${l.lockedVersions} deleted version${l.lockedVersions === 1 ? '' : 's'} (${formatBytes(l.lockedBytes)}) still retained` +
          (l.nextPurgeMs !== undefined
            ? `, the first until about ${new Date(l.nextPurgeMs).toISOString()}`
            : '') +
          '; a later prune removes them\n',
      );
  }
}

/** `vmvault prune`: delete what no snapshot needs (docs/gc.md). */
export function pruneCommand(): Command {
  return new Command('prune')
    .description('delete data no snapshot needs and repack mostly-unused packs (backups may run meanwhile)')
    .option('--dry-run', 'show what would be condemned and repacked, change nothing')
    .option('--max-unused <percent>', 'repack packs whose unused share exceeds this (default 10%)')
    .option(
      '--grace <duration>',
      'delete condemned packs no sooner than this after condemning them (default 1h; 0 for none)',
    )
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (o: PruneCliOptions & { repo?: string; json?: boolean }) => {
      parseMaxUnused(o.maxUnused);
      parseGrace(o.grace);
      const r = await withRepo(o, (repo) => runPrune(repo, o), o.dryRun ? 'read' : 'write');
      if (o.json) return printJson(pruneJson(r));
      keepSummary(pruneJson(r));
      printPruneSummary(r);
    });
}
