import { Command } from 'commander';
import {
  ExitCode,
  formatBytes,
  parseIsoTime,
  printable,
  UsageError,
  VmvaultError,
} from '../../util/index.js';
import {
  byTime,
  shortId,
  syncSnapshots,
  type Repository,
  type Snapshot,
  type SyncResult,
} from '../../repo/index.js';
import { commaList, keepSummary, openRepo, printJson, repoOption } from '../context.js';
import { progressEventsWanted } from '../events.js';
import { readOtherPassword } from '../password.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

interface SyncCliOptions {
  repo?: string;
  to?: string;
  toPasswordFile?: string;
  vm?: string[];
  tag?: string[];
  latest?: string;
  since?: string;
  dryRun?: boolean;
  json?: boolean;
}

/** The snapshots a sync copies: the filters, then `--latest N` per VM; oldest first. */
export function selectSnapshots(
  all: readonly Snapshot[],
  o: { vm?: string[]; tag?: string[]; latest?: number; sinceMs?: number },
): Snapshot[] {
  let list = all.filter(
    (s) =>
      (o.vm === undefined || o.vm.length === 0 || o.vm.includes(s.vm.name)) &&
      (o.tag === undefined || o.tag.length === 0 || o.tag.some((t) => s.tags.includes(t))) &&
      (o.sinceMs === undefined || Date.parse(s.time) >= o.sinceMs),
  );
  if (o.latest !== undefined) {
    const byVm = new Map<string, Snapshot[]>();
    for (const s of list) {
      const g = byVm.get(s.vm.name);
      if (g) g.push(s);
      else byVm.set(s.vm.name, [s]);
    }
    list = [...byVm.values()].flatMap((g) => g.sort(byTime).slice(-o.latest!));
  }
  return [...list].sort(byTime);
}

/** `vmvault sync -r SOURCE --to DEST`: copies snapshots the destination lacks (docs/sync.md). */
export function syncCommand(): Command {
  return new Command('sync')
    .description('copy snapshots to another repository (local or S3): only what it lacks, manifests last')
    .addOption(repoOption())
    .requiredOption(
      '--to <repo>',
      'the destination repository (vmvault init DEST --from-repo SOURCE makes one)',
    )
    .option(
      '--to-password-file <file>',
      "the destination's password: the first line of FILE (also VMVAULT_TO_PASSWORD…)",
    )
    .option('--vm <name>', 'only snapshots of this VM (repeatable or comma separated)', commaList)
    .option('--tag <tag>', 'only snapshots with this tag (repeatable or comma separated)', commaList)
    .option('--latest <n>', 'only the latest N snapshots of each VM')
    .option('--since <date>', 'only snapshots taken at or after this date (ISO 8601)')
    .option('--dry-run', 'list what would be copied, copy nothing')
    .option('--json', 'print a summary as JSON')
    .action(async (o: SyncCliOptions) => {
      const latest = o.latest === undefined ? undefined : Number(o.latest);
      if (latest !== undefined && (!/^\d+$/.test(o.latest!) || latest < 1))
        throw new UsageError(
          `--latest must be a whole number ≥ 1, not '${printable(o.latest!, 40)}'`,
          'for example --latest 3',
        );
      const sinceMs =
        o.since === undefined ? undefined : parseIsoTime(o.since, '--since', { dateOnly: true });
      if (!o.repo) throw new UsageError('no source repository given', 'pass -r SOURCE or set VMVAULT_REPO');
      const src = await openRepo({ repo: o.repo }, 'read');
      let dst: Repository | undefined;
      try {
        dst = await openRepo(
          {
            repo: o.to,
            password: () =>
              readOtherPassword('VMVAULT_TO_', {
                passwordFile: o.toPasswordFile,
                prompt: 'destination password: ',
              }),
          },
          o.dryRun ? 'read' : 'write',
        );
        if (dst.location === src.location)
          throw new UsageError('the source and the destination are the same repository', 'give another --to');
        const all = await src.listSnapshots();
        const selected = selectSnapshots(all, {
          ...(o.vm ? { vm: o.vm } : {}),
          ...(o.tag ? { tag: o.tag } : {}),
          ...(latest !== undefined ? { latest } : {}),
          ...(sinceMs !== undefined ? { sinceMs } : {}),
        });
        const tty = process.stderr.isTTY === true && !o.json;
        let snapshot = { at: 0, of: 0 };
        // Progress events (--log-file, --json-progress) also without a TTY.
        const bar =
          tty || progressEventsWanted()
            ? makeProgress('sync', process.stderr, !tty, {
                status: () => (snapshot.of > 0 ? `snapshot ${snapshot.at}/${snapshot.of}` : ''),
              })
            : undefined;
        let started = false;
        let shown = 0;
        const testKillAfter = Number(process.env.VMVAULT_TEST_SYNC_KILL_AFTER_CHUNKS ?? NaN);
        const r = await syncSnapshots(src, dst, selected, {
          dryRun: o.dryRun === true,
          sourceSnapshots: all,
          signal: rootAbort.signal,
          ...(bar
            ? {
                progress: (done: number, total: number, where: { at: number; of: number }) => {
                  snapshot = where;
                  if (!started) {
                    bar.start('sync', total);
                    started = true;
                  }
                  bar.advance(done - shown);
                  shown = done;
                },
              }
            : {}),
          // Test only (docs/cli.md): die like a SIGKILL after N chunks were copied.
          ...(Number.isSafeInteger(testKillAfter)
            ? {
                onChunk: (n: number) => {
                  if (n >= testKillAfter) process.kill(process.pid, 'SIGKILL');
                },
              }
            : {}),
        }).finally(() => bar?.done());
        if (o.json) printJson(r);
        else {
          keepSummary(r);
          printSummary(r, dst.location);
        }
        if (r.snapshots.failed > 0) {
          for (const f of r.failed) process.stderr.write(`error: ${printable(f.error, 600)}\n`);
          throw new VmvaultError(
            'PARTIAL',
            `${r.snapshots.failed} of ${r.snapshots.selected} snapshots were not copied (damaged in the source)`,
            {
              hint: "run 'vmvault check --read-data' on the source; the others were copied",
              exitCode: ExitCode.PARTIAL,
            },
          );
        }
      } finally {
        await dst?.close();
        await src.close();
      }
    });
}

function printSummary(r: SyncResult, to: string): void {
  const out = process.stdout;
  for (const c of r.copied)
    out.write(
      r.dryRun
        ? `would copy ${shortId(c.source)} ${printable(c.vm, 80)} ${c.time}\n`
        : `copied ${shortId(c.source)} → ${shortId(c.destination)} ${printable(c.vm, 80)} ${c.time}\n`,
    );
  const s = r.snapshots;
  out.write(
    `${r.dryRun ? 'would copy' : 'copied'} ${s.copied} snapshot${s.copied === 1 ? '' : 's'} to ${to}` +
      ` (${s.present} already there${s.failed > 0 ? `, ${s.failed} failed` : ''})` +
      (r.dryRun
        ? '\n'
        : `: ${r.chunks.copied} chunks (${formatBytes(r.bytes.copied)}, ${formatBytes(r.bytes.stored)} stored), ${r.chunks.present} already there (${formatBytes(r.bytes.present)})${r.verbatim ? `, ${r.chunks.verbatim} as stored` : r.sameIds ? ', sealed again for the destination' : ', renamed for the destination'}\n`),
  );
}
