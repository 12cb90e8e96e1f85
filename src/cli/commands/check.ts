import { Command } from 'commander';
import { formatBytes, parseTimeSpan, printable, UsageError } from '../../util/index.js';
import {
  BackendError,
  checkFailure,
  checkRecordOf,
  checkRepository,
  defaultHost,
  writeCheckRecord,
  describeGroup,
  formatDataSubset,
  parseDataSubset,
  type DataSubset,
  describeProblem,
  groupProblems,
  shortId,
  type CheckResult,
} from '../../repo/index.js';
import { checkStatePath, readCheckCursors, writeCheckCursor } from '../check-state.js';
import {
  globals,
  keepSummary,
  openBackendFor,
  printJson,
  repoOption,
  warnLine,
  withRepo,
} from '../context.js';
import { progressEventsWanted } from '../events.js';
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
    .option(
      '--read-data-subset <K/N|P%>',
      'with --read-data: read only part K of N (stable, by pack name), or the next P% of the packs in rotation',
    )
    .option(
      '--max-time <duration>',
      'with --read-data: stop starting pack reads after this long (30m, 2h, 1h30m); the next run continues where this one stopped',
    )
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(
      async (
        opts: {
          readData?: boolean;
          repair?: boolean;
          readDataSubset?: string;
          maxTime?: string;
          json?: boolean;
          repo?: string;
        },
        cmd: Command,
      ) => {
        if (opts.repair && !opts.readData)
          throw new UsageError(
            '--repair needs --read-data',
            "add --read-data ('vmvault check --read-data --repair'): only reading every chunk finds the corrupt ones",
          );
        for (const [given, name] of [
          [opts.readDataSubset, '--read-data-subset'],
          [opts.maxTime, '--max-time'],
        ] as const)
          if (given !== undefined && !opts.readData)
            throw new UsageError(
              `${name} needs --read-data`,
              `add --read-data ('vmvault check --read-data ${name} ${printable(given, 20)}'): it bounds how many packs are read`,
            );
        const subset: DataSubset | undefined =
          opts.readDataSubset === undefined ? undefined : parseDataSubset(opts.readDataSubset);
        const maxTimeMs = opts.maxTime === undefined ? undefined : parseTimeSpan(opts.maxTime, '--max-time');
        const rotating = maxTimeMs !== undefined || (subset !== undefined && 'percent' in subset);
        // One cursor per selection: a part K/N with --max-time rotates within that part.
        const selection = subset !== undefined && !('percent' in subset) ? formatDataSubset(subset) : 'all';
        const warn = (m: string): void => warnLine(m);
        const quiet = (globals(cmd).quiet ?? false) || opts.json === true;
        // A redrawn progress line on a TTY; nothing at all otherwise (the summary says it all).
        const tty = process.stderr.isTTY === true && !quiet;
        const result = await withRepo(
          opts,
          async (repo) => {
            const startedAt = new Date();
            const statePath = checkStatePath(repo.config.id);
            const startAfter = rotating
              ? (await readCheckCursors(statePath, repo.config.id, warn))[selection]?.lastPack
              : undefined;
            const r = await checkRepository(repo, {
              readData: opts.readData ?? false,
              repair: opts.repair ?? false,
              ...(subset !== undefined ? { subset } : {}),
              ...(maxTimeMs !== undefined ? { maxTimeMs } : {}),
              ...(startAfter !== undefined ? { startAfter } : {}),
              // Progress events (--log-file, --json-progress) also without a TTY.
              ...(tty || progressEventsWanted()
                ? { progressFor: (phase: string) => makeProgress(`check ${phase}`, process.stderr, !tty) }
                : {}),
              signal: rootAbort.signal,
            });
            if (r.rotating && r.lastPack !== null) {
              try {
                await writeCheckCursor(statePath, repo.config.id, selection, {
                  lastPack: r.lastPack,
                  time: new Date().toISOString(),
                });
              } catch (err) {
                warn(
                  `cannot record where this check stopped in ${statePath} (${(err as Error).message}): the next run starts at the same place`,
                );
              }
            }
            // The result goes into the repository (status/check) for `vmvault ui`, through a
            // writable stack of its own (check reads through a read-only one); read-only media: none.
            if (!rootAbort.signal.aborted) {
              const rec = checkRecordOf(r, { startedAt, finishedAt: new Date(), host: defaultHost() });
              const via = openBackendFor(opts.repo!, 'write');
              try {
                await writeCheckRecord(via, repo.codec, rec);
              } catch (err) {
                // Storage that refuses writes (read-only media, read-only credentials): no record.
                if (!(err instanceof BackendError && err.kind === 'permission'))
                  warn(`cannot record this check's result in the repository: ${(err as Error).message}`);
              } finally {
                await via.close().catch(() => undefined);
              }
            }
            return r;
          },
          opts.repair ? 'write' : 'read',
        );
        if (opts.json) printJson(jsonSummary(result));
        else {
          keepSummary(jsonSummary(result));
          process.stdout.write(textSummary(result));
        }
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
    ...(r.readData ? packsReadLines(r) : []),
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

/** With --read-data: how many packs were read of how many, and where a rotation goes on. */
function packsReadLines(r: CheckResult): string[] {
  const of =
    r.subset !== null && !r.subset.endsWith('%')
      ? ` of part ${r.subset}'s ${r.packsSelected} (${formatBytes(r.packBytesSelected)}; ${r.packs} packs in all)`
      : ` of ${r.packs} (${formatBytes(r.packBytes)})`;
  const lines = [`packs read         ${r.packsRead} (${formatBytes(r.packBytesRead)})${of}`];
  if (r.rotating) {
    const why = r.stoppedEarly
      ? `stopped early: --max-time ${formatSpan(r.maxTimeMs ?? 0)} reached`
      : r.packsRead >= r.packsSelected
        ? 'every selected pack read'
        : `the next ${r.subset ?? ''} of the packs read`;
    lines.push(
      `rotation           ${why}${r.startAfter !== null ? `; started after pack ${r.startAfter.slice(0, 8)}` : '; started at the first pack'}${
        r.nextPack !== null ? `; the next run starts at pack ${r.nextPack.slice(0, 8)}` : ''
      }`,
    );
  }
  return lines;
}

/** 1h30m, 45s: a --max-time as given back. */
function formatSpan(ms: number): string {
  const parts: string[] = [];
  let left = Math.round(ms / 1000);
  for (const [unit, s] of [
    ['d', 86400],
    ['h', 3600],
    ['m', 60],
    ['s', 1],
  ] as const) {
    const n = Math.floor(left / s);
    left -= n * s;
    if (n) parts.push(`${n}${unit}`);
  }
  return parts.join('') || '0s';
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
    subset: r.subset,
    maxTimeMs: r.maxTimeMs,
    packsSelected: r.packsSelected,
    packBytesSelected: r.packBytesSelected,
    packsRead: r.packsRead,
    packBytesRead: r.packBytesRead,
    stoppedEarly: r.stoppedEarly,
    rotating: r.rotating,
    startAfter: r.startAfter,
    lastPack: r.lastPack,
    nextPack: r.nextPack,
    chunksMissing: r.chunksMissing,
    chunksCorrupt: r.chunksCorrupt,
    repaired: r.repaired,
    repairedIndexes: r.repairedIndexes,
    repairedSnapshots: r.repairedSnapshots,
    rebuiltIndex: r.rebuiltIndex ?? null,
    voids: r.voids,
    packs: r.packs,
    packBytes: r.packBytes,
    packsDamaged: r.packsDamaged,
    orphanPacks: r.orphanPacks,
    ignoredKeys: r.ignoredKeys,
    unreferencedChunks: r.unreferencedChunks,
    unreferencedBytes: r.unreferencedBytes,
    unreferencedExact: r.unreferencedExact,
    problems: r.problems.map((p) => ({ ...p, shortId: shortId(p.snapshot), message: describeProblem(p) })),
  };
}
