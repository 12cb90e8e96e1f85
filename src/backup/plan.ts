import {
  isSafeDiskTarget,
  isSafeVmName,
  NAME_RULES,
  printable,
  UsageError,
  VmvaultError,
} from '../util/index.js';
import type { DomainDisk } from '../libvirt/index.js';
import type { Snapshot } from '../repo/index.js';

/** Backup levels as virtnbdbackup names them (`-l`). */
export type BackupLevel = 'auto' | 'full' | 'inc' | 'diff' | 'copy';
export type BackupMode = 'full' | 'inc' | 'diff' | 'copy';
export const BACKUP_LEVELS: readonly BackupLevel[] = ['auto', 'full', 'inc', 'diff', 'copy'];

export interface DiskPlan {
  target: string;
  disk: DomainDisk;
  /** Whole disk (allocated extents) or only dirty extents since the base checkpoint. */
  read: 'full' | 'incremental';
  /** Raw (or other bitmap-less) disks: read fully every time, no bitmap in the checkpoint. */
  isRaw: boolean;
  /** Why a disk is read fully inside an incremental job (new disk, no bitmap yet). */
  note?: string;
}

export interface BackupPlan {
  mode: BackupMode;
  /** Checkpoint created by this backup (live full/inc), else null. */
  newCheckpoint: string | null;
  /** Checkpoint the dirty bitmaps count from (inc/diff), else null. */
  baseCheckpoint: string | null;
  /** Snapshot whose index supplies the chunks of clean slots (inc/diff), else null. */
  parent: Snapshot | null;
  /** Chain snapshots whose checkpoints libvirt lost and must be redefined first, oldest first. */
  redefine: Snapshot[];
  /** This repository's older checkpoints to delete once a full backup succeeded. */
  deleteAfterSuccess: string[];
  disks: DiskPlan[];
  skipped: Array<{ target: string; reason: string }>;
  notes: string[];
}

export interface PlanInput {
  level: BackupLevel;
  domainName: string;
  isActive: boolean;
  disks: readonly DomainDisk[];
  include?: readonly string[];
  exclude?: readonly string[];
  includeRaw?: boolean;
  /** This VM's snapshots in the repository, any order. */
  history: readonly Snapshot[];
  /** Checkpoint names libvirt currently has for the domain. */
  libvirtCheckpoints: readonly string[];
  /** Prefix that marks this repository's checkpoints: `vmvault.<repo id 8>.`. */
  checkpointPrefix: string;
  /** Name for a new checkpoint. */
  newCheckpointName: string;
}

export function checkpointPrefix(repoId: string): string {
  return `vmvault.${repoId.slice(0, 8)}.`;
}

export function newCheckpointName(repoId: string, now: Date = new Date()): string {
  const ts = now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.(\d{3})Z$/, '$1Z');
  return `${checkpointPrefix(repoId)}${ts}`;
}

/** A snapshot that started or continued a checkpoint chain (its checkpoint can be a base). */
function chainMember(s: Snapshot): boolean {
  return s.checkpoint !== null && (s.mode === 'full' || s.mode === 'inc');
}

function isBitmapCapable(d: DomainDisk): boolean {
  return (d.format ?? 'raw') === 'qcow2';
}

/**
 * Chooses the mode, the base checkpoint, the parent snapshot and a per-disk plan. Pure: all
 * libvirt and repository facts come in through `input`.
 */
export function planBackup(input: PlanInput): BackupPlan {
  if (!isSafeVmName(input.domainName))
    throw new VmvaultError(
      'UNSAFE_NAME',
      `domain name '${printable(input.domainName, 80)}' cannot be stored by vmvault`,
      { hint: `rename the domain: ${NAME_RULES.vm}` },
    );
  const notes: string[] = [];
  const skipped: BackupPlan['skipped'] = [];
  const include = input.include?.length ? new Set(input.include) : undefined;
  const exclude = new Set(input.exclude ?? []);
  for (const name of [...(include ?? []), ...exclude]) {
    if (!input.disks.some((d) => d.target === name)) {
      throw new UsageError(
        `domain '${input.domainName}' has no disk '${name}'`,
        `its disks are: ${input.disks.map((d) => d.target).join(', ')}`,
      );
    }
  }

  // Disks that take part at all.
  const candidates: DomainDisk[] = [];
  for (const d of input.disks) {
    if (d.device !== 'disk') skipped.push({ target: d.target, reason: `${d.device} device` });
    else if (include && !include.has(d.target))
      skipped.push({ target: d.target, reason: 'not in --include' });
    else if (exclude.has(d.target)) skipped.push({ target: d.target, reason: 'excluded' });
    else if (!isSafeDiskTarget(d.target))
      throw new VmvaultError(
        'UNSAFE_NAME',
        `domain '${printable(input.domainName, 80)}' has a disk named '${printable(d.target, 40)}', which vmvault cannot store (${NAME_RULES.disk})`,
        { hint: `exclude it with -x '${printable(d.target, 40)}' or give it a libvirt target such as vdb` },
      );
    else if (!isBitmapCapable(d) && !input.includeRaw)
      skipped.push({ target: d.target, reason: `${d.format ?? 'raw'} disk (use --raw to include it)` });
    else if (!input.isActive && !d.path)
      skipped.push({
        target: d.target,
        reason: `${d.type} disk without a local path cannot be read while the domain is shut off`,
      });
    else candidates.push(d);
  }
  if (candidates.length === 0) {
    throw new VmvaultError('NOTHING_TO_BACK_UP', `no disk of domain '${input.domainName}' can be backed up`, {
      hint: skipped.length
        ? `skipped: ${skipped.map((s) => `${s.target} (${s.reason})`).join(', ')}`
        : undefined,
    });
  }

  const history = [...input.history].sort((a, b) => Date.parse(a.time) - Date.parse(b.time));
  const chain = history.filter(chainMember);
  const lastFull = [...chain].reverse().find((s) => s.mode === 'full');
  const lastChain = lastFull ? chain.filter((s) => Date.parse(s.time) >= Date.parse(lastFull.time)) : [];
  const last = lastChain[lastChain.length - 1];
  const inLibvirt = new Set(input.libvirtCheckpoints);
  const ours = input.libvirtCheckpoints.filter((c) => c.startsWith(input.checkpointPrefix));
  const canRedefine = (s: Snapshot): boolean => s.files.some((f) => f.kind === 'checkpoint-xml');
  /** Members of the current chain up to `base` that libvirt lacks, if all can be redefined. */
  const missingUpTo = (base: Snapshot): Snapshot[] | null => {
    const upTo = lastChain.filter((s) => Date.parse(s.time) <= Date.parse(base.time));
    const missing = upTo.filter((s) => !inLibvirt.has(s.checkpoint!));
    return missing.every(canRedefine) ? missing : null;
  };

  let level = input.level;
  if (level === 'auto') {
    if (!last) {
      level = input.isActive ? 'full' : 'copy';
      notes.push(`no checkpoint chain of '${input.domainName}' in this repository yet: ${level} backup`);
    } else if (missingUpTo(last) === null) {
      level = input.isActive ? 'full' : 'copy';
      notes.push(
        `checkpoint ${last.checkpoint} is gone from libvirt and cannot be redefined: ${level} backup starts a new chain`,
      );
    } else level = 'inc';
  }

  if (level === 'full' && !input.isActive) {
    notes.push(
      `domain '${input.domainName}' is shut off: no checkpoint can be created, so full becomes copy`,
    );
    level = 'copy';
  }

  if (level === 'copy' || level === 'full') {
    const disks = candidates.map((d) => ({
      target: d.target,
      disk: d,
      read: 'full' as const,
      isRaw: !isBitmapCapable(d),
    }));
    return {
      mode: level,
      newCheckpoint: level === 'full' ? input.newCheckpointName : null,
      baseCheckpoint: null,
      parent: null,
      redefine: [],
      deleteAfterSuccess: level === 'full' ? ours : [],
      disks,
      skipped,
      notes,
    };
  }

  // inc / diff
  const base = level === 'inc' ? last : lastFull;
  if (!base || !base.checkpoint) {
    throw new VmvaultError(
      'NO_CHAIN',
      `no full backup of '${input.domainName}' with a checkpoint in this repository`,
      {
        hint: 'run a full backup first (-l full), or use -l auto',
      },
    );
  }
  const redefine = missingUpTo(base);
  if (redefine === null) {
    throw new VmvaultError(
      'CHAIN_BROKEN',
      `checkpoint ${base.checkpoint} is gone from libvirt and the repository cannot redefine it`,
      {
        hint: 'start a new chain with -l full (or use -l auto)',
      },
    );
  }
  if (!input.isActive)
    notes.push(
      `domain '${input.domainName}' is shut off: reading the persistent bitmap ${base.checkpoint}; no new checkpoint`,
    );
  const disks: DiskPlan[] = candidates.map((d) => {
    const isRaw = !isBitmapCapable(d);
    const parentDisk = base.disks.find((p) => p.target === d.target);
    if (isRaw) return { target: d.target, disk: d, read: 'full', isRaw };
    if (!parentDisk || !parentDisk.checkpointBitmap) {
      return {
        target: d.target,
        disk: d,
        read: 'full',
        isRaw,
        note: `${d.target} has no bitmap in checkpoint ${base.checkpoint} (new disk): read in full`,
      };
    }
    return { target: d.target, disk: d, read: 'incremental', isRaw };
  });
  for (const d of disks) if (d.note) notes.push(d.note);
  return {
    mode: level,
    newCheckpoint: level === 'inc' && input.isActive ? input.newCheckpointName : null,
    baseCheckpoint: base.checkpoint,
    parent: base,
    redefine,
    deleteAfterSuccess: [],
    disks,
    skipped,
    notes,
  };
}
