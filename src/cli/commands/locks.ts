import { Command } from 'commander';
import { printable, UsageError } from '../../util/index.js';
import {
  lockIsStale,
  MAINTENANCE_LOCK,
  readLock,
  type ListedSession,
  type LockHolder,
  type Repository,
} from '../../repo/index.js';
import { printJson, repoOption, withRepo } from '../context.js';
import { table } from './snapshots.js';

function age(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function entry(s: ListedSession): Record<string, unknown> {
  return {
    id: s.id,
    ...(s.info
      ? {
          host: s.info.host,
          pid: s.info.pid,
          command: s.info.command,
          startedAt: s.info.startedAt,
          pins: s.info.pins,
        }
      : {}),
    ...(s.damaged ? { damaged: s.damaged } : {}),
    lastHeartbeat: new Date(s.modifiedMs).toISOString(),
    ageMs: s.ageMs,
    stale: s.stale,
    ...(s.staleReason ? { staleReason: s.staleReason } : {}),
  };
}

/** `vmvault locks`: the sessions (leases) of the processes writing to the repository. */
export function locksCommand(): Command {
  return new Command('locks')
    .description('list the sessions of processes writing to the repository (host, pid, command, age)')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (opts: { repo?: string; json?: boolean }) => {
      const { sessions, lock } = await withRepo(
        opts,
        async (r) => {
          const sessions = await r.listSessions();
          return { sessions, lock: await maintenanceLock(r, sessions) };
        },
        'read',
      );
      if (opts.json) return printJson({ sessions: sessions.map(entry), maintenanceLock: lock ?? null });
      process.stdout.write(
        table(
          ['SESSION', 'HOST', 'PID', 'COMMAND', 'STARTED', 'HEARTBEAT AGE', 'STATE'],
          sessions.map((s) => [
            s.id.slice(0, 8),
            printable(s.info?.host ?? '?', 60),
            s.info ? String(s.info.pid) : '?',
            printable(s.info?.command ?? (s.damaged ? `damaged: ${s.damaged}` : '?'), 80),
            printable(s.info?.startedAt.replace('T', ' ').replace(/\.\d+Z$/, 'Z') ?? '?', 40),
            age(s.ageMs),
            s.stale ? `stale (${s.staleReason ?? 'expired'})` : 'alive',
          ]),
        ),
      );
      process.stdout.write(`${sessions.length} session${sessions.length === 1 ? '' : 's'}\n`);
      if (lock)
        process.stdout.write(
          lock.holder
            ? `maintenance lock held by session ${lock.holder.session.slice(0, 8)} (${printable(lock.holder.command, 40)} on ${printable(lock.holder.host, 60)}, pid ${lock.holder.pid}, since ${printable(lock.holder.since, 40)})${lock.stale ? ': stale' : ''}\n`
            : `maintenance lock ${MAINTENANCE_LOCK} is damaged (${lock.damaged ?? '?'}): stale\n`,
        );
    });
}

/** The maintenance lock (prune's), if any, and whether its holder is gone. */
async function maintenanceLock(
  r: Repository,
  sessions: readonly ListedSession[],
): Promise<{ holder?: LockHolder; damaged?: string; stale: boolean } | undefined> {
  const lock = await readLock(r.backend, r.codec);
  return lock ? { ...lock, stale: lockIsStale(lock, sessions) } : undefined;
}

/** `vmvault unlock --stale`: removes sessions whose lease ran out or whose process is gone. */
export function unlockCommand(): Command {
  return new Command('unlock')
    .description('remove stale sessions (lease expired, or the process is gone from this host)')
    .option('--stale', 'remove only stale sessions (required: live ones are never removed)')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (opts: { repo?: string; json?: boolean; stale?: boolean }) => {
      if (!opts.stale)
        throw new UsageError(
          'unlock removes only stale sessions',
          "run 'vmvault unlock --stale' (see 'vmvault locks')",
        );
      const { removed, lockRemoved } = await withRepo(opts, async (r) => {
        const out: ListedSession[] = [];
        const sessions = await r.listSessions();
        for (const s of sessions) {
          if (!s.stale || s.id === r.session?.id.toString('hex')) continue;
          await r.deleteSession(s.id);
          out.push(s);
        }
        // A maintenance lock whose session is gone or stale goes too (a killed prune's).
        const lock = await maintenanceLock(r, sessions);
        if (lock?.stale) await r.backend.delete(MAINTENANCE_LOCK);
        return { removed: out, lockRemoved: lock?.stale === true };
      });
      if (opts.json) return printJson({ removed: removed.map(entry), maintenanceLockRemoved: lockRemoved });
      if (lockRemoved) process.stdout.write('removed the stale maintenance lock\n');
      for (const s of removed)
        process.stdout.write(
          `removed session ${s.id.slice(0, 8)} (${printable(s.info?.host ?? '?', 60)} pid ${s.info?.pid ?? '?'}, ${printable(s.info?.command ?? '?', 60)}): ${s.staleReason ?? 'stale'}\n`,
        );
      process.stdout.write(`removed ${removed.length} stale session${removed.length === 1 ? '' : 's'}\n`);
    });
}
