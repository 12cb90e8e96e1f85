import { Command } from 'commander';
import { printable, UsageError } from '../../util/index.js';
import {
  applyRetention,
  describePolicy,
  isEmptyPolicy,
  parseDuration,
  parseKeepCount,
  resolveSnapshotRef,
  shortId,
  type RetentionDecision,
  type RetentionPolicy,
  type Snapshot,
} from '../../repo/index.js';
import { commaList, printJson, repoOption, withRepo } from '../context.js';
import { parseGrace, parseMaxUnused, printPruneSummary, pruneJson, runPrune } from './prune.js';
import { table } from './snapshots.js';

interface ForgetOptions {
  repo?: string;
  json?: boolean;
  dryRun?: boolean;
  vm?: string[];
  keepLast?: string;
  keepHourly?: string;
  keepDaily?: string;
  keepWeekly?: string;
  keepMonthly?: string;
  keepYearly?: string;
  keepWithin?: string;
  keepTag?: string[];
  prune?: boolean;
  maxUnused?: string;
  grace?: string;
}

/** One snapshot's fate: kept (and why) or removed, per VM. */
interface Verdict {
  snapshot: Snapshot;
  keep: boolean;
  reasons: string[];
}

function policyOf(o: ForgetOptions): RetentionPolicy {
  const p: RetentionPolicy = {};
  const count = (v: string | undefined, flag: string): number | undefined =>
    v === undefined ? undefined : parseKeepCount(v, flag);
  const set = <K extends keyof RetentionPolicy>(k: K, v: RetentionPolicy[K] | undefined): void => {
    if (v !== undefined) p[k] = v;
  };
  set('last', count(o.keepLast, '--keep-last'));
  set('hourly', count(o.keepHourly, '--keep-hourly'));
  set('daily', count(o.keepDaily, '--keep-daily'));
  set('weekly', count(o.keepWeekly, '--keep-weekly'));
  set('monthly', count(o.keepMonthly, '--keep-monthly'));
  set('yearly', count(o.keepYearly, '--keep-yearly'));
  if (o.keepWithin !== undefined) p.within = parseDuration(o.keepWithin);
  if (o.keepTag?.length) p.tags = o.keepTag;
  return p;
}

/**
 * `vmvault forget`: removes snapshots named on the command line, or those a retention policy does
 * not keep, per VM (docs/retention.md). Protected snapshots are never removed. Only manifests go;
 * the space their data holds comes back with prune (docs/cli.md).
 */
export function forgetCommand(): Command {
  return new Command('forget')
    .description('remove snapshots: those named, or those a retention policy does not keep (per VM)')
    .argument('[snapshot...]', 'snapshots to remove (id, id prefix, VM@latest, VM@<date-time>)')
    .option('--keep-last <n>', 'keep the last n snapshots ("unlimited" for all)')
    .option('--keep-hourly <n>', 'keep the last snapshot of each of the last n hours with snapshots')
    .option('--keep-daily <n>', 'keep the last snapshot of each of the last n days with snapshots')
    .option('--keep-weekly <n>', 'keep the last snapshot of each of the last n ISO weeks with snapshots')
    .option('--keep-monthly <n>', 'keep the last snapshot of each of the last n months with snapshots')
    .option('--keep-yearly <n>', 'keep the last snapshot of each of the last n years with snapshots')
    .option('--keep-within <duration>', "keep snapshots within this long of the VM's newest (e.g. 2y5m7d3h)")
    .option('--keep-tag <tag>', 'keep snapshots with this tag (repeatable or comma separated)', commaList)
    .option('--vm <name>', 'only snapshots of this VM (repeatable)', commaList)
    .option('--dry-run', 'show what would be removed, remove nothing')
    .option('--prune', 'prune afterwards (as vmvault prune; --max-unused and --grace apply)')
    .option(
      '--max-unused <percent>',
      'with --prune: repack packs whose unused share exceeds this (default 10%)',
    )
    .option('--grace <duration>', 'with --prune: delete condemned packs no sooner than this (default 1h)')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (refs: string[], o: ForgetOptions) => {
      const policy = policyOf(o);
      const byPolicy = !isEmptyPolicy(policy);
      if (refs.length > 0 && byPolicy)
        throw new UsageError(
          'give snapshots or a policy (--keep-*), not both',
          "run 'vmvault forget --help'",
        );
      if (refs.length === 0 && !byPolicy)
        throw new UsageError(
          'no snapshots and no policy given: forget would remove everything',
          'name snapshots, or give a policy such as --keep-daily 7 --keep-weekly 4',
        );
      if ((o.maxUnused !== undefined || o.grace !== undefined) && !o.prune)
        throw new UsageError('--max-unused and --grace go with --prune', 'add --prune, or leave them out');
      parseMaxUnused(o.maxUnused);
      parseGrace(o.grace);
      const result = await withRepo(
        o,
        async (repo) => {
          // One listing for every reference (resolveSnapshot would read every manifest per ref).
          const { snapshots: all, damaged } = await repo.scanSnapshots();
          repo.reportDamagedSnapshots(damaged);
          let verdicts: Verdict[];
          if (refs.length > 0) {
            const named = new Set<string>();
            for (const r of refs) named.add(resolveSnapshotRef(r, all, damaged).id);
            verdicts = all
              .filter((s) => named.has(s.id))
              .map((s) => ({
                snapshot: s,
                keep: s.protected === true,
                reasons: s.protected === true ? ['protected'] : [],
              }));
          } else {
            verdicts = [];
            const vms = new Map<string, Snapshot[]>();
            for (const s of all) {
              if (o.vm?.length && !o.vm.includes(s.vm.name)) continue;
              const g = vms.get(s.vm.name);
              if (g) g.push(s);
              else vms.set(s.vm.name, [s]);
            }
            for (const [vm, snaps] of vms) {
              const decisions = applyRetention(
                snaps.map((s) => ({
                  id: s.id,
                  time: new Date(s.time),
                  tags: s.tags,
                  protected: s.protected === true,
                })),
                policy,
                { now: new Date() },
              );
              const byId = new Map<string, RetentionDecision>(decisions.map((d) => [d.id, d]));
              const v = snaps.map((s) => ({
                snapshot: s,
                keep: byId.get(s.id)!.keep,
                reasons: byId.get(s.id)!.reasons,
              }));
              // As restic: a policy never removes every snapshot of a VM (a --keep-tag alone could).
              if (!v.some((x) => x.keep))
                throw new UsageError(
                  `the policy would remove every snapshot of VM '${printable(vm, 80)}'`,
                  'add a --keep-last or --keep-daily rule, or name the snapshots to remove',
                );
              verdicts.push(...v);
            }
          }
          const removed: string[] = [];
          if (!o.dryRun)
            for (const v of verdicts) {
              if (v.keep) continue;
              await repo.forgetSnapshot(v.snapshot);
              removed.push(v.snapshot.id);
            }
          // Prune on the same handle (its session and lock); a dry run prunes dry as well.
          const pruned = o.prune ? await runPrune(repo, { ...o, dryRun: o.dryRun === true }) : undefined;
          return { verdicts, removed, pruned };
        },
        o.dryRun ? 'read' : 'write',
      );
      const { verdicts, removed, pruned } = result;
      if (o.json)
        return printJson({
          dryRun: o.dryRun === true,
          policy: byPolicy ? describePolicy(policy) : null,
          snapshots: verdicts.map((v) => ({
            id: v.snapshot.id,
            vm: v.snapshot.vm.name,
            time: v.snapshot.time,
            tags: v.snapshot.tags,
            protected: v.snapshot.protected === true,
            keep: v.keep,
            reasons: v.reasons,
          })),
          removed,
          ...(pruned ? { prune: pruneJson(pruned) } : {}),
        });
      const rows = verdicts.map((v) => [
        shortId(v.snapshot.id),
        v.snapshot.time.replace('T', ' ').replace(/\.\d+Z$/, 'Z'),
        printable(v.snapshot.vm.name, 60),
        v.keep ? 'keep' : o.dryRun ? 'would remove' : 'removed',
        printable(v.reasons.join(', '), 120),
      ]);
      process.stdout.write(table(['ID', 'TIME', 'VM', 'ACTION', 'REASONS'], rows));
      const n = verdicts.filter((v) => !v.keep).length;
      process.stdout.write(
        `${o.dryRun ? 'would remove' : 'removed'} ${n} snapshot${n === 1 ? '' : 's'}, kept ${verdicts.length - n}` +
          `${!o.dryRun && n > 0 && !pruned ? "; 'vmvault prune' frees their data" : ''}\n`,
      );
      if (pruned) printPruneSummary(pruned);
    });
}
