import { Command } from 'commander';
import { formatBytes, UsageError } from '../../util/index.js';
import {
  checkFailure,
  checkRepository,
  describeGroup,
  describeProblem,
  groupProblems,
  shortId,
  type CheckResult,
} from '../../repo/index.js';
import { globals, printJson, repoOption, withRepo } from '../context.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';

export function checkCommand(): Command {
  return new Command('check')
    .description(
      'verify the repository: snapshot manifests, disk indexes, and that every referenced chunk is stored',
    )
    .option('--read-data', 'also read every referenced chunk once and verify its content (BLAKE3)')
    .option(
      '--repair',
      'with --read-data: void damaged records and pages, rebuild a damaged chunk index from the pack trailers, move damaged manifests to quarantine/, so that a full backup of the same data stores them again',
    )
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(
      async (opts: { readData?: boolean; repair?: boolean; json?: boolean; repo?: string }, cmd: Command) => {
        if (opts.repair && !opts.readData)
          throw new UsageError(
            '--repair needs --read-data',
            "add --read-data ('vmvault check --read-data --repair'): only reading every chunk finds the corrupt ones",
          );
        const quiet = (globals(cmd).quiet ?? false) || opts.json === true;
        // A redrawn progress line on a TTY; nothing at all otherwise (the summary says it all).
        const tty = process.stderr.isTTY === true && !quiet;
        const result = await withRepo(
          opts,
          (repo) =>
            checkRepository(repo, {
              readData: opts.readData ?? false,
              repair: opts.repair ?? false,
              ...(tty
                ? { progressFor: (phase: string) => makeProgress(`check ${phase}`, process.stderr, false) }
                : {}),
              signal: rootAbort.signal,
            }),
          opts.repair ? 'write' : 'read',
        );
        if (opts.json) printJson(jsonSummary(result));
        else process.stdout.write(textSummary(result));
        const failure = checkFailure(result);
        if (failure) throw failure;
      },
    );
}

function textSummary(r: CheckResult): string {
  const plural = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;
  // One line per damaged object (its first place and how many more), not per place: a chunk
  // shared by a hundred snapshots is one line. --json lists every place.
  const lines = groupProblems(r.problems).map(describeGroup);
  lines.push(
    `snapshots          ${r.snapshots} checked, ${r.snapshotsDamaged} damaged`,
    `indexes            ${r.indexes} checked${r.files ? `, ${plural(r.files, 'file')}` : ''}`,
    `chunks referenced  ${r.chunksReferenced} (${formatBytes(r.bytesReferenced)})`,
    r.readData
      ? `chunks read        ${r.chunksRead} (${formatBytes(r.bytesRead)} verified)`
      : `chunks read        0 (presence only; --read-data verifies their content)`,
    `damaged chunks     ${r.chunksMissing} missing, ${r.readData ? r.chunksCorrupt : '-'} corrupt`,
    `unreferenced       ${plural(r.unreferencedChunks, 'chunk')}, ${formatBytes(r.unreferencedBytes)} (${
      r.unreferencedExact
        ? 'not an error: what a garbage collection would delete'
        : 'includes chunks of the damaged snapshots and indexes, which could not be read'
    })`,
  );
  if (r.repair) lines.push(...repairSummary(r));
  if (r.problems.length === 0) lines.push('no problems found');
  return `${lines.join('\n')}\n`;
}

/** With --repair: what was moved, and what that means for the snapshots. */
function repairSummary(r: CheckResult): string[] {
  const plural = (n: number, what: string): string => `${n} ${what}${n === 1 ? '' : 's'}`;
  const moved = r.repaired.length;
  const stillMissing = r.chunksMissing - moved;
  const lines = [
    `repaired           ${plural(moved, 'corrupt chunk')} voided${
      r.voids.length ? ` (${plural(r.voids.length, 'void record')} in quarantine/)` : ''
    }`,
  ];
  if (r.rebuiltIndex)
    lines.push(
      `repaired           chunk index rebuilt from the pack trailers (${r.rebuiltIndex.entries} entries, ${plural(r.rebuiltIndex.superseded.length, 'object')} superseded)`,
    );
  const movedIndexes = r.repairedIndexes.length;
  const movedManifests = r.repairedSnapshots.length;
  if (movedIndexes || movedManifests)
    lines.push(
      `repaired           ${[
        movedIndexes
          ? `${movedIndexes} disk index${movedIndexes === 1 ? '' : 'es'} with a damaged page voided`
          : '',
        movedManifests ? `${plural(movedManifests, 'damaged snapshot manifest')} moved to quarantine/` : '',
      ]
        .filter(Boolean)
        .join(' and ')}`,
    );
  if (movedIndexes)
    lines.push(
      'the snapshots that use a moved disk index stay damaged until a full backup of the same data stores it again',
    );
  if (movedManifests)
    lines.push(
      `the snapshot${movedManifests === 1 ? '' : 's'} of a moved manifest ${movedManifests === 1 ? 'is' : 'are'} gone from listings`,
    );
  if (moved)
    lines.push(
      `the snapshots that use ${moved === 1 ? 'it' : 'them'} stay damaged until a full backup of the same data (backup -l full, backup-image) stores ${moved === 1 ? 'it' : 'them'} again; until then 'vmvault restore --ignore-errors' restores the rest`,
    );
  if (stillMissing > 0)
    lines.push(
      `${plural(stillMissing, 'missing chunk')} cannot be repaired: only a full backup of the same data stores ${stillMissing === 1 ? 'it' : 'them'} again`,
    );
  if (r.chunksCorrupt)
    lines.push(
      `${plural(r.chunksCorrupt, 'corrupt chunk')} not moved: read again, ${r.chunksCorrupt === 1 ? 'its blob' : 'their blobs'} matched the id or had gone`,
    );
  const kept = r.problems.filter(
    (p) => (p.kind === 'index-damaged' || p.kind === 'snapshot-damaged') && p.quarantineKey === undefined,
  ).length;
  if (kept)
    lines.push(
      'not moved: manifests of a newer vmvault, and indexes that are sound but do not fit their manifest',
    );
  return lines;
}

function jsonSummary(r: CheckResult): Record<string, unknown> {
  return {
    message_type: 'summary',
    ok: r.problems.length === 0,
    readData: r.readData,
    repair: r.repair,
    snapshots: r.snapshots,
    snapshotsDamaged: r.snapshotsDamaged,
    indexes: r.indexes,
    files: r.files,
    chunksReferenced: r.chunksReferenced,
    bytesReferenced: r.bytesReferenced,
    chunksRead: r.chunksRead,
    bytesRead: r.bytesRead,
    chunksMissing: r.chunksMissing,
    chunksCorrupt: r.chunksCorrupt,
    repaired: r.repaired,
    repairedIndexes: r.repairedIndexes,
    repairedSnapshots: r.repairedSnapshots,
    rebuiltIndex: r.rebuiltIndex ?? null,
    voids: r.voids,
    packs: r.packs,
    packsDamaged: r.packsDamaged,
    orphanPacks: r.orphanPacks,
    ignoredKeys: r.ignoredKeys,
    unreferencedChunks: r.unreferencedChunks,
    unreferencedBytes: r.unreferencedBytes,
    unreferencedExact: r.unreferencedExact,
    problems: r.problems.map((p) => ({ ...p, shortId: shortId(p.snapshot), message: describeProblem(p) })),
  };
}
