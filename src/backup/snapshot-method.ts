/**
 * The backup method for libvirt without the backup API (seed 001, docs/cli.md "backup methods"):
 * put the running domain on temporary external overlays (a disk-only snapshot without metadata),
 * copy the now read-only base images, then merge each overlay back with an active block commit
 * and pivot. Also: the choice between this and the pull-mode job (`--method auto`), and the
 * detection and commit of overlays a killed run left behind.
 */
import { promises as fs } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { errorMessage, pidAlive, sleep, VmvaultError, type Logger } from '../util/index.js';
import {
  buildDiskSnapshotXml,
  domainCapsBackupSupport,
  hasIncrementalBackupCapability,
  isAgentUnresponsive,
  isLibvirtError,
  parseDomainXml,
  VIR_DOMAIN_BLOCK_COMMIT,
  VIR_DOMAIN_BLOCK_JOB_ABORT,
  VIR_DOMAIN_BLOCK_JOB_TYPE,
  VIR_DOMAIN_SNAPSHOT_CREATE,
  type DomainModel,
  type DomainRef,
  type LibvirtClient,
} from '../libvirt/index.js';

/** `--method`: auto (the backup API where it works, else snapshot), pull, snapshot. */
export type BackupMethod = 'auto' | 'pull' | 'snapshot';
export const BACKUP_METHODS: readonly BackupMethod[] = ['auto', 'pull', 'snapshot'];

export interface MethodFacts {
  /** libvirt's library version (virConnectGetLibVersion), when it answered. */
  version?: { major: number; minor: number; micro: number } | undefined;
  /** virConnectGetDomainCapabilities for the domain's arch/machine/virttype, when it answered. */
  domainCapsXml?: string | undefined;
  /** The domain's live XML. */
  domainXml: string;
  domainName: string;
}

/**
 * Which method a live backup uses. `auto` keeps the pull-mode job unless the daemon cannot run
 * it: libvirt before 6.0 has no backup API; 6.0–7.1 offers it only to domains whose XML turns on
 * QEMU's `incremental-backup` capability; a daemon that reports `<backup supported='no'/>`.
 * Pure (every fact comes in through `facts`).
 */
export function chooseMethod(
  requested: BackupMethod,
  facts: MethodFacts,
): { method: 'pull' | 'snapshot'; note?: string } {
  if (requested !== 'auto') return { method: requested };
  const v = facts.version;
  const why = (reason: string): { method: 'snapshot'; note: string } => ({
    method: 'snapshot',
    note: `${reason}: using --method snapshot (external snapshot, copy, block commit; copy backups only)`,
  });
  if (v) {
    const n = v.major * 1_000_000 + v.minor * 1000 + v.micro;
    const ver = `${v.major}.${v.minor}.${v.micro}`;
    if (n < 6_000_000) return why(`libvirt ${ver} has no backup API (it came in 6.0)`);
    if (n < 7_002_000 && !hasIncrementalBackupCapability(facts.domainXml))
      return why(
        `libvirt ${ver} offers the backup API only to domains with the QEMU capability 'incremental-backup', which '${facts.domainName}' lacks`,
      );
  }
  if (facts.domainCapsXml !== undefined && domainCapsBackupSupport(facts.domainCapsXml) === 'no')
    return why(`the daemon reports no backup support for '${facts.domainName}' (domain capabilities)`);
  return { method: 'pull' };
}

/** Gathers the facts chooseMethod needs; a fact the daemon does not give is left out. */
export async function methodFacts(
  client: LibvirtClient,
  model: DomainModel,
  domainXml: string,
): Promise<MethodFacts> {
  const version = await client.getLibVersion().catch(() => undefined);
  const domainCapsXml = await client
    .getDomainCapabilities({
      arch: model.os.arch ?? null,
      machine: model.os.machine ?? null,
      virttype: model.hypervisor || null,
    })
    .catch(() => undefined);
  return { version, domainCapsXml, domainXml, domainName: model.name };
}

// ----- overlays ------------------------------------------------------------------------------

/** Overlays live in `<scratch dir>/vmvault-overlay-<pid>-XXXXXX/<target>.qcow2`. */
const OVERLAY_DIR_PREFIX = 'vmvault-overlay-';
const OVERLAY_RE = /(?:^|\/)vmvault-overlay-(\d+)-[^/]+\/[^/]+\.qcow2$/;

export interface OverlayDisk {
  target: string;
  /** The image the domain ran on before, and runs on again after the commit. */
  base: string;
  overlay: string;
}

/** A domain on its overlays; `committed` once every disk was merged back and pivoted. */
export interface OverlaySet {
  dir: string;
  disks: OverlayDisk[];
  committed: boolean;
}

/** The pid of the vmvault run that created `path`, when it is one of its overlays. */
export function overlayOwner(path: string | undefined): number | null {
  const m = path ? OVERLAY_RE.exec(path) : null;
  return m ? Number(m[1]) : null;
}

/** Disks of a domain whose active image is a vmvault overlay (left by a killed run). */
export function staleOverlays(model: DomainModel): Array<OverlayDisk & { pid: number }> {
  const out: Array<OverlayDisk & { pid: number }> = [];
  for (const d of model.disks) {
    const pid = overlayOwner(d.path);
    if (pid === null) continue;
    out.push({ target: d.target, overlay: d.path!, base: d.backingChain[0]?.path ?? '', pid });
  }
  return out;
}

export interface OverlayOptions {
  /** Freeze guest filesystems (QUIESCE) when the domain has an agent channel. */
  freeze: boolean;
  /** Only these mountpoints ([] = all, through QUIESCE). */
  freezeMountpoints: readonly string[];
}

/**
 * Puts `targets` of the running domain on new overlays in a fresh directory under `scratchDir`
 * (an external disk-only snapshot: DISK_ONLY | NO_METADATA | ATOMIC, QUIESCE when an agent
 * answers). Every other disk is left out of the snapshot. On failure nothing has changed (ATOMIC).
 */
export async function putOnOverlays(
  client: LibvirtClient,
  dom: DomainRef,
  model: DomainModel,
  targets: ReadonlyArray<{ target: string; base: string }>,
  scratchDir: string,
  opts: OverlayOptions,
  log: Logger,
): Promise<OverlaySet> {
  const dir = await fs.mkdtemp(join(scratchDir, `${OVERLAY_DIR_PREFIX}${process.pid}-`));
  // libvirt or QEMU (possibly another user) creates the overlay files here.
  await fs.chmod(dir, 0o1777);
  const disks: OverlayDisk[] = targets.map((t) => ({
    target: t.target,
    base: t.base,
    overlay: join(dir, `${t.target}.qcow2`),
  }));
  const wanted = new Set(disks.map((d) => d.target));
  const xml = buildDiskSnapshotXml({
    name: `vmvault-${Date.now()}-${process.pid}`,
    description: 'vmvault backup overlay (committed back when the copy ends)',
    disks: model.disks.map((d) => {
      const o = disks.find((x) => x.target === d.target);
      return o && wanted.has(d.target)
        ? { name: d.target, snapshot: 'external' as const, file: o.overlay }
        : { name: d.target, snapshot: 'no' as const };
    }),
  });
  const F = VIR_DOMAIN_SNAPSHOT_CREATE;
  const base =
    F.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY |
    F.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA |
    F.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC;
  const removeFiles = async (): Promise<void> => {
    for (const d of disks) await fs.rm(d.overlay, { force: true }).catch(() => {});
  };
  try {
    if (!opts.freeze) {
      await client.snapshotCreateXml(dom, xml, base);
    } else if (!model.hasGuestAgent) {
      log.info(`${model.name}: no guest agent channel: filesystems are not frozen (crash-consistent backup)`);
      await client.snapshotCreateXml(dom, xml, base);
    } else if (opts.freezeMountpoints.length) {
      // QUIESCE freezes everything: a mountpoint list needs an explicit freeze around the snapshot.
      let frozen = false;
      try {
        await client.fsFreeze(dom, opts.freezeMountpoints);
        frozen = true;
      } catch (err) {
        log.warn(
          `${model.name}: guest agent did not freeze the filesystems (${errorMessage(err)}); the backup is crash-consistent`,
        );
      }
      try {
        await client.snapshotCreateXml(dom, xml, base);
      } finally {
        if (frozen) await thaw(client, dom, opts.freezeMountpoints, model.name, log);
      }
    } else {
      try {
        await client.snapshotCreateXml(dom, xml, base | F.VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE);
      } catch (err) {
        log.warn(
          `${model.name}: guest agent did not freeze the filesystems (${errorMessage(err)}); the backup is crash-consistent`,
        );
        await removeFiles();
        await client.snapshotCreateXml(dom, xml, base);
      }
    }
  } catch (err) {
    await removeFiles();
    await fs.rm(dir, { recursive: true, force: true }).catch(() => {});
    throw new VmvaultError(
      'SNAPSHOT_FAILED',
      `libvirt refused the external snapshot of '${model.name}': ${errorMessage(err)}`,
      { hint: 'check the scratch directory (--scratchdir) and the disks; nothing was changed', cause: err },
    );
  }
  return { dir, disks, committed: false };
}

async function thaw(
  client: LibvirtClient,
  dom: DomainRef,
  mountpoints: readonly string[],
  name: string,
  log: Logger,
): Promise<void> {
  await client.fsThaw(dom, mountpoints).catch((err: unknown) => {
    if (!(isLibvirtError(err) && isAgentUnresponsive(err)))
      log.warn(`${name}: thaw failed: ${errorMessage(err)}`);
  });
}

const POLL_MS = 100;

/**
 * Merges one disk's active overlay into its backing image (active block commit, SHALLOW: only the
 * top layer) and pivots the domain back onto it. An active commit already running on the disk
 * (a killed run's) is taken over instead of started again.
 */
async function commitOne(client: LibvirtClient, dom: DomainRef, target: string): Promise<void> {
  const existing = await client.getBlockJobInfo(dom, target);
  if (existing && existing.type !== VIR_DOMAIN_BLOCK_JOB_TYPE.VIR_DOMAIN_BLOCK_JOB_TYPE_ACTIVE_COMMIT) {
    throw new Error(`disk ${target} has another block job running (type ${existing.type})`);
  }
  if (!existing) {
    await client.blockCommit(dom, target, {
      flags:
        VIR_DOMAIN_BLOCK_COMMIT.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE |
        VIR_DOMAIN_BLOCK_COMMIT.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW,
    });
  }
  // Ready = the overlay is merged and QEMU mirrors new writes to both: then pivot. No time limit:
  // the domain must not stay on the overlay, and the job ends on its own if it fails.
  for (;;) {
    const info = await client.getBlockJobInfo(dom, target);
    if (!info) throw new Error(`the block commit of ${target} ended without becoming ready`);
    if (info.ready) break;
    await sleep(POLL_MS);
  }
  await client.blockJobAbort(dom, target, VIR_DOMAIN_BLOCK_JOB_ABORT.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT);
}

/**
 * Commits every disk of `set` back and pivots (each disk tried even when another failed), checks
 * that the domain runs on the base images again, then deletes the overlays. Throws one error
 * naming what is left when any disk could not be committed.
 */
export async function commitOverlays(
  client: LibvirtClient,
  dom: DomainRef,
  name: string,
  disks: readonly OverlayDisk[],
  log: Logger,
): Promise<void> {
  if (!(await client.isDomainActive(dom).catch(() => true))) throw offlineOverlayError(name, disks);
  const failed: string[] = [];
  for (const d of disks) {
    try {
      await commitOne(client, dom, d.target);
    } catch (err) {
      failed.push(`${d.target} (${errorMessage(err)})`);
    }
  }
  // Trust only what libvirt says the disks run on now.
  const now = parseDomainXml(await client.getDomainXml(dom, 0));
  const left = disks.filter((d) => now.disks.find((x) => x.target === d.target)?.path === d.overlay);
  for (const d of disks) {
    if (left.includes(d)) continue;
    await fs.rm(d.overlay, { force: true }).catch((err: unknown) => {
      log.warn(`${name}: could not remove overlay ${d.overlay}: ${errorMessage(err)}`);
    });
  }
  for (const dir of new Set(disks.map((d) => dirname(d.overlay)))) await fs.rmdir(dir).catch(() => {});
  if (left.length) {
    if (!(await client.isDomainActive(dom).catch(() => true))) throw offlineOverlayError(name, left);
    throw new VmvaultError(
      'OVERLAY_COMMIT_FAILED',
      `domain '${name}' still runs on vmvault overlay(s) ${left.map((d) => d.overlay).join(', ')}: the block commit failed for ${failed.join(', ') || left.map((d) => d.target).join(', ')}`,
      {
        hint: `run the backup again with --kill-stale-job to commit them, or: virsh blockcommit ${name} ${left[0]!.target} --active --pivot`,
      },
    );
  }
  log.info(`${name}: overlays committed; the domain runs on its own images again`);
}

function offlineOverlayError(name: string, disks: readonly OverlayDisk[]): VmvaultError {
  const d = disks[0]!;
  return new VmvaultError(
    'OVERLAY_LEFT',
    `domain '${name}' stopped while on its vmvault overlay(s) ${disks.map((x) => x.overlay).join(', ')}; its definition now uses them`,
    {
      hint: `while it is shut off: qemu-img commit ${d.overlay}, then 'virsh edit ${name}' to set ${d.target}'s source back to ${d.base || 'its base image'} (and its driver type); or start it and run the backup with --kill-stale-job`,
    },
  );
}

/**
 * A domain whose disks are vmvault overlays (a killed `--method snapshot` run): with
 * `killStale` they are committed back (the returned model is re-read); otherwise a one-line
 * error says what to do. A domain without overlays is returned unchanged.
 */
export async function resolveStaleOverlays(
  client: LibvirtClient,
  dom: DomainRef,
  model: DomainModel,
  killStale: boolean,
  log: Logger,
): Promise<{ model: DomainModel; xml: string } | null> {
  const stale = staleOverlays(model);
  if (!stale.length) return null;
  if (!(await client.isDomainActive(dom).catch(() => true))) throw offlineOverlayError(model.name, stale);
  const first = stale[0]!;
  if (!killStale) {
    const live = first.pid !== process.pid && pidAlive(first.pid);
    throw new VmvaultError(
      'STALE_OVERLAY',
      `domain '${model.name}' runs on vmvault overlay ${first.overlay} (${live ? `vmvault pid ${first.pid} is still running` : `left by an interrupted --method snapshot run, pid ${first.pid}`})`,
      {
        hint: 'if no other backup of it is running, pass --kill-stale-job to commit the overlay back first',
      },
    );
  }
  log.info(
    `${model.name}: committing ${stale.length} overlay(s) left by an interrupted run (${stale.map((s) => `${s.target}: ${basename(dirname(s.overlay))}`).join(', ')})`,
  );
  await commitOverlays(client, dom, model.name, stale, log);
  const xml = await client.getDomainXml(dom, 0);
  return { model: parseDomainXml(xml), xml };
}
