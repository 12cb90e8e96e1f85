import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import {
  errorMessage,
  exec,
  ExitCode,
  isVmvaultError,
  mapLimit,
  sleep,
  testPause,
  nullLogger,
  throwIfAborted,
  VmvaultError,
  type Logger,
  type Progress,
  printable,
  UsageError,
} from '../util/index.js';
import {
  buildCheckpointXml,
  buildPullBackupXml,
  isAgentUnresponsive,
  isLibvirtError,
  isNoDomain,
  isNoDomainCheckpoint,
  isOperationInvalid,
  parseBackupXml,
  parseCheckpointXml,
  parseDomainXml,
  VIR_DOMAIN_BACKUP_BEGIN,
  VIR_DOMAIN_CHECKPOINT_CREATE,
  VIR_DOMAIN_CHECKPOINT_XML,
  VIR_DOMAIN_XML,
  type DomainModel,
  type DomainRef,
  type LibvirtClient,
} from '../libvirt/index.js';
import {
  defaultHost,
  format,
  type Repository,
  type Snapshot,
  type SnapshotDisk,
  type SnapshotFile,
} from '../repo/index.js';
import { backupDisk, SourceReadError, type SlotAction } from './chunk-pipeline.js';
import {
  checkpointPrefix,
  newCheckpointName,
  planBackup,
  type BackupLevel,
  type BackupPlan,
  type DiskPlan,
} from './plan.js';
import { makeRuntimeDir } from './runtime-dir.js';
import {
  chooseMethod,
  commitOverlays,
  methodFacts,
  putOnOverlays,
  resolveStaleOverlays,
  type BackupMethod,
  type OverlaySet,
} from './snapshot-method.js';
import { PROGRAM } from './version.js';

/** One extent of an export, as the backup needs it. */
export interface ExportExtent {
  offset: number;
  length: number;
  /** Reads as zeros (hole or zero flag in base:allocation). */
  isZero: boolean;
  /** Changed since the base checkpoint (always true when no bitmap context was asked for). */
  isDirty: boolean;
}

/** A disk export opened over NBD (the job's backup export, or qemu-nbd for a shut-off domain). */
export interface ExportReader {
  readonly sizeBytes: number;
  read(offset: number, length: number, into?: Buffer): Promise<Buffer>;
  extents(offset: number, length: number): AsyncIterable<ExportExtent>;
  close(): Promise<void>;
}

export interface ExportOpener {
  /** Connects to `exportName` on a unix socket, with `qemu:dirty-bitmap:<bitmap>` when given. */
  openSocket(socketPath: string, exportName: string, bitmap: string | null): Promise<ExportReader>;
  /** Exports a local image read-only (qemu-nbd), with a persistent bitmap when given. */
  openImage(path: string, format: string, bitmap: string | null, runtimeDir: string): Promise<ExportReader>;
}

export interface VmBackupOptions {
  domain: string;
  level: BackupLevel;
  include?: string[];
  exclude?: string[];
  raw?: boolean;
  /** Freeze guest filesystems around the job start (default true); mountpoints ([] = all). */
  freeze?: boolean;
  freezeMountpoints?: string[];
  /** Only report how much changed since the base checkpoint. */
  estimate?: boolean;
  /** Skip the backup when fewer bytes changed. */
  thresholdBytes?: number;
  /** Disks read in parallel. */
  workers?: number;
  /**
   * Abort a leftover job of the domain, or commit the overlays a killed `--method snapshot` run
   * left, before starting.
   */
  killStaleJob?: boolean;
  /** How a running domain is captured (default auto: the backup API, else snapshot). */
  method?: BackupMethod;
  tags?: string[];
  /** Parent of the private runtime directory (NBD socket, scratch files). */
  scratchDir?: string;
  exports: ExportOpener;
  logger?: Logger;
  progressFor?: (target: string) => Progress;
  signal?: AbortSignal;
}

export interface VmBackupResult {
  domain: string;
  /** pull: the backup API's job; snapshot: overlay + copy + block commit; offline: shut off, images read. */
  method: 'pull' | 'snapshot' | 'offline';
  plan: BackupPlan;
  snapshot: Snapshot | null;
  /**
   * What the backup reads (estimate / threshold): `changed` bytes since the base checkpoint (from
   * libvirt, or a shut-off disk's persistent bitmap), or the `allocated` data a full or copy reads.
   */
  estimateBytes?: number;
  estimateKind?: 'changed' | 'allocated';
  skippedReason?: string;
}

const RUNTIME_PREFIX = 'vmvault-run-';

/**
 * Backs up one libvirt domain into the repository: plans the mode from the repository's history
 * and libvirt's checkpoints, starts a pull-mode backup job (or exports the images of a shut-off
 * domain), reads only what the plan needs, stores the snapshot, and cleans up on every exit path.
 */
export async function backupDomain(
  client: LibvirtClient,
  repo: Repository,
  opts: VmBackupOptions,
): Promise<VmBackupResult> {
  const log = opts.logger ?? nullLogger;
  const dom = await lookup(client, opts.domain);
  const active = await client.isDomainActive(dom);
  let liveXml = await client.getDomainXml(dom, 0);
  let model = parseDomainXml(liveXml);
  // A killed `--method snapshot` run may have left the domain on its overlays: commit them first.
  const fixed = await resolveStaleOverlays(client, dom, model, opts.killStaleJob ?? false, log);
  if (fixed) ({ xml: liveXml, model } = fixed);
  const requested = opts.method ?? 'auto';
  const chosen = active
    ? chooseMethod(
        requested,
        requested === 'auto'
          ? await methodFacts(client, model, liveXml)
          : { domainXml: liveXml, domainName: model.name },
      )
    : undefined;
  const method = chosen?.method ?? 'offline';
  let level = opts.level;
  const methodNotes: string[] = chosen?.note ? [chosen.note] : [];
  if (method === 'snapshot' && level !== 'copy') {
    if (level === 'auto') {
      level = 'copy';
      methodNotes.push('--method snapshot keeps no checkpoints: copy backup');
    } else if (requested === 'snapshot') {
      throw new UsageError(
        `-l ${level} needs checkpoints, which --method snapshot cannot create (copy backups only)`,
        'use -l copy (or -l auto) with --method snapshot, or --method pull',
      );
    } else {
      throw new VmvaultError(
        'METHOD_COPY_ONLY',
        `-l ${level} needs the backup API, which '${model.name}' cannot use here (${chosen?.note ?? 'snapshot method'})`,
        { hint: 'use -l copy (or -l auto) for a full copy without checkpoints' },
      );
    }
  }
  const prefix = checkpointPrefix(repo.config.id);
  const history = (await repo.listSnapshots()).filter((s) =>
    s.vm.uuid ? s.vm.uuid === model.uuid : s.vm.name === model.name,
  );
  const libvirtCheckpoints = (await client.listAllCheckpoints(dom)).map((c) => c.name);
  const planInput = {
    level,
    domainName: model.name,
    isActive: active,
    disks: model.disks,
    include: opts.include ?? [],
    exclude: opts.exclude ?? [],
    includeRaw: opts.raw ?? false,
    history,
    libvirtCheckpoints,
    checkpointPrefix: prefix,
    newCheckpointName: newCheckpointName(repo.config.id),
  };
  let plan = planBackup(planInput);
  // A garbage collection pending since before the parent was committed may have condemned data
  // the parent's tree names, and this writer may not reuse it (docs/gc.md): back up in full.
  if (plan.parent && !(await repo.parentUsable(plan.parent))) {
    plan = planBackup({ ...planInput, level: 'full' });
    plan.notes.unshift(
      `a prune is pending and the parent snapshot is newer than its mark: backing up in full instead of ${opts.level}`,
    );
  }
  plan.notes.unshift(...methodNotes);
  if (method === 'snapshot') {
    // The base images are read through qemu-nbd: only disks with a local path.
    for (const d of plan.disks.filter((x) => !x.disk.path)) {
      plan.skipped.push({
        target: d.target,
        reason: `${d.disk.type} disk without a local path cannot be copied by --method snapshot`,
      });
    }
    plan.disks = plan.disks.filter((x) => x.disk.path);
    if (!plan.disks.length)
      throw new VmvaultError('NOTHING_TO_BACK_UP', `no disk of domain '${model.name}' can be backed up`, {
        hint: `skipped: ${plan.skipped.map((s) => `${s.target} (${s.reason})`).join(', ')}`,
      });
  }
  for (const n of plan.notes) log.info(`${model.name}: ${n}`);
  for (const s of plan.skipped) log.info(`${model.name}: skipping ${printable(s.target, 40)}: ${s.reason}`);

  // Redefine checkpoints libvirt lost (transient domain, moved host, undefine/define).
  for (const s of plan.redefine) await redefineCheckpoint(client, repo, dom, s, log);

  // Estimate / threshold: libvirt reports the dirty size of the base checkpoint.
  // A first full, a copy and a shut-off domain have no checkpoint size: the estimate is what the
  // backup would read (the allocated data, or the persistent bitmap's dirty bytes), measured.
  let estimateBytes: number | undefined;
  let estimateKind: 'changed' | 'allocated' | undefined;
  if (opts.estimate || opts.thresholdBytes !== undefined) {
    if (plan.baseCheckpoint && active) {
      estimateBytes = await checkpointDirtyBytes(client, dom, plan.baseCheckpoint, plan.disks);
      if (estimateBytes !== undefined) estimateKind = 'changed';
    }
    if (estimateBytes === undefined) {
      const m = await measuredEstimate(plan, active, opts, log, model.name);
      if (m) ({ bytes: estimateBytes, kind: estimateKind } = m);
    }
    const est = estimateBytes !== undefined && estimateKind ? { estimateBytes, estimateKind } : {};
    if (opts.estimate) return { domain: model.name, method, plan, snapshot: null, ...est };
    if (
      estimateBytes !== undefined &&
      opts.thresholdBytes !== undefined &&
      estimateBytes < opts.thresholdBytes
    ) {
      const what = estimateKind === 'allocated' ? 'to read' : 'changed';
      const reason = `${estimateBytes} bytes ${what}, less than the threshold of ${opts.thresholdBytes}: backup skipped`;
      log.info(`${model.name}: ${reason}`);
      return { domain: model.name, method, plan, snapshot: null, ...est, skippedReason: reason };
    }
    if (estimateBytes === undefined && opts.thresholdBytes !== undefined)
      log.info(
        `${model.name}: no estimate of the ${plan.mode} backup's size: the threshold does not apply, backing up`,
      );
  }

  // QEMU (possibly another user) creates the NBD socket and scratch files here.
  const runtimeDir = await makeRuntimeDir(opts.scratchDir ?? '/var/tmp', RUNTIME_PREFIX, 0o1777);
  let jobStarted = false;
  let overlays: OverlaySet | undefined;
  /** Readers still open (each disk closes its own; a failure closes the rest). */
  const openReaders = new Set<ExportReader>();
  let checkpointCreated = false;
  let succeeded = false;
  const subscription = active
    ? await client.subscribe({ domain: dom, kinds: ['lifecycle'] }).catch(() => undefined)
    : undefined;
  const abort = new AbortController();
  const onOuterAbort = (): void => abort.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onOuterAbort, { once: true });
  let shutdownError: VmvaultError | undefined;
  const stopped = (what: string): VmvaultError =>
    new VmvaultError(
      'DOMAIN_STOPPED',
      `domain '${model.name}' ${what === 'crashed' ? 'crashed' : 'shut down'} during the backup; nothing was saved for this run`,
      {
        hint: 'chunks already stored are reused by the next run; back it up again once it is running, or shut off with -l copy',
      },
    );
  // Notice the domain going away mid-job (guest shutdown, crash, destroy) and stop cleanly.
  void subscription
    ?.waitFor((e) => e.kind === 'lifecycle' && ['stopped', 'shutdown', 'crashed'].includes(e.event), {
      signal: abort.signal,
    })
    .then((e) => {
      shutdownError = stopped(e.kind === 'lifecycle' ? e.event : 'stopped');
      abort.abort(shutdownError);
    })
    .catch(() => {});
  try {
    const readers = new Map<string, ExportReader>();
    if (method === 'pull') {
      const { socket } = await startJob(client, dom, model, plan, runtimeDir, opts, log);
      jobStarted = true;
      checkpointCreated = plan.newCheckpoint !== null;
      const info = parseBackupXml(await client.backupGetXml(dom));
      for (const d of plan.disks) {
        const di = info.disks.find((x) => x.name === d.target);
        const exportName = di?.exportName ?? d.target;
        const bitmap = d.read === 'incremental' ? (di?.exportBitmap ?? `backup-${d.target}`) : null;
        readers.set(d.target, await opts.exports.openSocket(socket, exportName, bitmap));
      }
    } else {
      if (method === 'snapshot') {
        await clearStaleJob(client, dom, opts.killStaleJob ?? false, model.name, log);
        overlays = await putOnOverlays(
          client,
          dom,
          model,
          plan.disks.map((d) => ({ target: d.target, base: d.disk.path! })),
          opts.scratchDir ?? '/var/tmp',
          { freeze: opts.freeze ?? true, freezeMountpoints: opts.freezeMountpoints ?? [] },
          log,
        );
        log.info(`${model.name}: running on overlays in ${overlays.dir} while the base images are copied`);
      }
      // Shut off, or the bases under the overlays (read-only now): export the images themselves.
      for (const d of plan.disks) {
        const bitmap = d.read === 'incremental' ? plan.baseCheckpoint : null;
        const r = await opts.exports.openImage(d.disk.path!, d.disk.format ?? 'raw', bitmap, runtimeDir);
        readers.set(d.target, r);
        openReaders.add(r);
      }
      if (method === 'snapshot') await testPause('snapshot-copy'); // test-only: guest writes, SIGKILL
    }

    const parentIndexes = new Map<string, Awaited<ReturnType<Repository['getIndex']>>>();
    // The parent's pages and chunks are reused without being re-read: pin it (docs/gc.md).
    if (plan.parent) await repo.session?.pin([plan.parent.id]);
    await testPause('after-pin'); // test-only: a test forgets the parent and prunes meanwhile
    if (plan.parent) {
      for (const d of plan.disks) {
        const pd = plan.parent.disks.find((x) => x.target === d.target);
        if (d.read !== 'incremental' || !pd) continue;
        try {
          parentIndexes.set(d.target, await repo.getIndex(pd));
        } catch (err) {
          // A damaged or missing parent index cannot supply the clean chunks: read the whole
          // disk instead (the job's export has all of it), so this snapshot is complete anyway.
          if (!(isVmvaultError(err) && err.exitCode === ExitCode.INTEGRITY)) throw err;
          log.warn(
            `${printable(opts.domain)}/${d.target}: the parent snapshot's disk index cannot be used (${err.message}); reading the whole disk instead of the changes`,
          );
        }
      }
    }

    const disks = await mapLimit(
      plan.disks,
      Math.max(1, opts.workers ?? 1),
      async (d): Promise<SnapshotDisk> => {
        const reader = readers.get(d.target)!;
        try {
          return await backupOneDisk(
            repo,
            d,
            reader,
            parentIndexes.get(d.target),
            plan,
            opts,
            abort.signal,
            log,
          );
        } finally {
          openReaders.delete(reader);
          await reader.close().catch(() => {});
        }
      },
    );
    throwIfAborted(abort.signal);
    if (overlays) {
      // Merge the guest's writes back and pivot before anything else (the domain XML saved
      // below must name the disks' own images, not the overlays).
      overlays.committed = true; // tried once here; a failure says what is left
      await commitOverlays(client, dom, model.name, overlays.disks, log);
    }

    const files = await collectFiles(client, repo, dom, model, plan, active, log);
    const snapshot = await repo.putSnapshot({
      version: format.MANIFEST_VERSION,
      vm: { name: model.name, uuid: model.uuid },
      time: new Date().toISOString(),
      host: defaultHost(),
      tags: opts.tags ?? [],
      parent: plan.parent?.id ?? null,
      mode: plan.mode,
      checkpoint: plan.newCheckpoint,
      disks,
      files,
      program: PROGRAM,
    });
    succeeded = true;
    if (plan.deleteAfterSuccess.length) {
      for (const name of plan.deleteAfterSuccess) {
        try {
          await client.checkpointDelete(await client.lookupCheckpointByName(dom, name), 0);
        } catch (err) {
          log.warn(`${model.name}: could not delete old checkpoint ${name}: ${errorMessage(err)}`);
        }
      }
      log.info(`${model.name}: removed ${plan.deleteAfterSuccess.length} older vmvault checkpoint(s)`);
    }
    return {
      domain: model.name,
      method,
      plan,
      snapshot,
      ...(estimateBytes !== undefined && estimateKind ? { estimateBytes, estimateKind } : {}),
    };
  } catch (err) {
    // The NBD connection may drop before libvirt reports the domain gone: ask for up to 3 s.
    // (A failed read arrives as a SourceReadError naming the disk; its cause is the NBD error.)
    const nbdErr = err instanceof SourceReadError ? err.cause : err;
    const connectionLost =
      isVmvaultError(nbdErr) && (nbdErr.code === 'NBD_CLOSED' || nbdErr.code === 'NBD_PROTOCOL');
    if (!shutdownError && active && !(opts.signal?.aborted ?? false)) {
      for (let i = 0; i < 30 && !shutdownError; i++) {
        if (!(await client.isDomainActive(dom).catch(() => true))) {
          shutdownError = stopped('stopped');
          break;
        }
        if (!connectionLost) break;
        await sleep(100);
      }
    }
    const failure: unknown = shutdownError ?? err;
    if (overlays && !overlays.committed) {
      // Never leave the domain on the overlays: stop the copy, close the exports, commit back.
      abort.abort();
      for (const r of openReaders) await r.close().catch(() => {});
      openReaders.clear();
      overlays.committed = true;
      try {
        await commitOverlays(client, dom, model.name, overlays.disks, log);
      } catch (commitErr) {
        log.warn(
          `${model.name}: the backup failed: ${isVmvaultError(failure) ? failure.oneLine() : errorMessage(failure)}`,
        );
        throw commitErr;
      }
    }
    throw failure;
  } finally {
    opts.signal?.removeEventListener('abort', onOuterAbort);
    for (const r of openReaders) await r.close().catch(() => {});
    if (jobStarted) await client.abortJob(dom).catch(() => {});
    // A checkpoint whose backup did not complete must never become a base: delete it.
    if (checkpointCreated && !succeeded && plan.newCheckpoint) {
      try {
        await client.checkpointDelete(await client.lookupCheckpointByName(dom, plan.newCheckpoint), 0);
      } catch (err) {
        if (!(isLibvirtError(err) && (isNoDomainCheckpoint(err) || isNoDomain(err)))) {
          log.warn(
            `${model.name}: could not delete checkpoint ${plan.newCheckpoint} of the failed run: ${errorMessage(err)} (it is ignored by later backups)`,
          );
        }
      }
    }
    abort.abort();
    await subscription?.close().catch(() => {});
    await fs.rm(runtimeDir, { recursive: true, force: true }).catch(() => {});
  }
}

async function lookup(client: LibvirtClient, name: string): Promise<DomainRef> {
  try {
    return await client.lookupDomain(name);
  } catch (err) {
    if (isLibvirtError(err) && isNoDomain(err)) {
      throw new VmvaultError('DOMAIN_NOT_FOUND', `domain '${name}' not found`, {
        hint: "check the name with 'virsh list --all' (and --connect)",
      });
    }
    throw err;
  }
}

async function startJob(
  client: LibvirtClient,
  dom: DomainRef,
  model: DomainModel,
  plan: BackupPlan,
  runtimeDir: string,
  opts: VmBackupOptions,
  log: Logger,
): Promise<{ socket: string }> {
  const socket = join(runtimeDir, 'nbd.sock');
  const planned = new Set(plan.disks.map((d) => d.target));
  const backupXml = buildPullBackupXml({
    server: { transport: 'unix', socket },
    disks: model.disks
      .filter((d) => d.device === 'disk')
      .map((d) => {
        const p = plan.disks.find((x) => x.target === d.target);
        if (!p) return { name: d.target, backup: false };
        return {
          name: d.target,
          backup: true,
          backupMode: p.read === 'incremental' ? ('incremental' as const) : ('full' as const),
          ...(p.read === 'incremental' && plan.baseCheckpoint ? { incremental: plan.baseCheckpoint } : {}),
          scratchFile: join(runtimeDir, `${d.target}.scratch`),
        };
      }),
  });
  const checkpointXml = plan.newCheckpoint
    ? buildCheckpointXml({
        name: plan.newCheckpoint,
        description: `vmvault ${plan.mode} backup`,
        disks: model.disks
          .filter((d) => d.device === 'disk')
          .map((d) => {
            const p = plan.disks.find((x) => x.target === d.target);
            return p && planned.has(d.target) && !p.isRaw
              ? { name: d.target, checkpoint: 'bitmap' as const }
              : { name: d.target, checkpoint: 'no' as const };
          }),
      })
    : undefined;

  const version = await client.getLibVersion().catch(() => undefined);
  const preserve = version !== undefined && version.major * 1000 + version.minor >= 11010;
  const flags = preserve ? VIR_DOMAIN_BACKUP_BEGIN.VIR_DOMAIN_BACKUP_BEGIN_PRESERVE_SHUTDOWN_DOMAIN : 0;

  const freeze = (opts.freeze ?? true) && model.hasGuestAgent;
  let frozen = false;
  if (opts.freeze ?? true) {
    if (!model.hasGuestAgent)
      log.info(`${model.name}: no guest agent channel: filesystems are not frozen (crash-consistent backup)`);
    else {
      try {
        await client.fsFreeze(await client.lookupDomain(model.name), opts.freezeMountpoints ?? []);
        frozen = true;
      } catch (err) {
        log.warn(
          `${model.name}: guest agent did not freeze the filesystems (${errorMessage(err)}); the backup is crash-consistent`,
        );
      }
    }
  }
  try {
    await begin(client, dom, backupXml, checkpointXml, flags, opts.killStaleJob ?? false, model.name, log);
  } finally {
    if (frozen || (freeze && frozen)) {
      await client.fsThaw(dom, opts.freezeMountpoints ?? []).catch((err: unknown) => {
        if (!(isLibvirtError(err) && isAgentUnresponsive(err)))
          log.warn(`${model.name}: thaw failed: ${errorMessage(err)}`);
      });
    }
  }
  return { socket };
}

async function begin(
  client: LibvirtClient,
  dom: DomainRef,
  backupXml: string,
  checkpointXml: string | undefined,
  flags: number,
  killStale: boolean,
  name: string,
  log: Logger,
): Promise<void> {
  await clearStaleJob(client, dom, killStale, name, log);
  try {
    await client.backupBegin(dom, backupXml, checkpointXml ?? null, flags);
  } catch (err) {
    const stale =
      isLibvirtError(err) &&
      (isOperationInvalid(err) ||
        /cannot acquire state change lock|already (an )?active|another job/i.test(err.message));
    throw new VmvaultError(
      stale ? 'BACKUP_JOB_ACTIVE' : 'BACKUP_BEGIN_FAILED',
      `libvirt refused to start the backup of '${name}': ${errorMessage(err)}`,
      {
        ...(stale
          ? { hint: 'if no other backup is running, pass --kill-stale-job to abort the leftover job first' }
          : {}),
        cause: err,
      },
    );
  }
}

/** A job left by a killed run makes libvirt wait 30 s for its lock and then fail: look first. */
async function clearStaleJob(
  client: LibvirtClient,
  dom: DomainRef,
  killStale: boolean,
  name: string,
  log: Logger,
): Promise<void> {
  const job = await client.getJobInfo(dom).catch(() => undefined);
  if (job && job.typeCode !== 0) {
    if (!killStale) {
      throw new VmvaultError(
        'BACKUP_JOB_ACTIVE',
        `domain '${name}' already has a job running (${job.type})`,
        {
          hint: 'if no other backup is running, pass --kill-stale-job to abort the leftover job first',
        },
      );
    }
    log.info(`${name}: aborting a stale ${job.type} job`);
    await client.abortJob(dom).catch(() => {});
    for (
      let i = 0;
      i < 100 && ((await client.getJobInfo(dom).catch(() => undefined))?.typeCode ?? 0) !== 0;
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** Walks an export's extents once and turns them into a slot plan for the chunk pipeline. */
async function planSlots(
  reader: ExportReader,
  read: 'full' | 'incremental',
): Promise<(slot: number, offset: number, length: number) => SlotAction> {
  const data: Array<[number, number]> = [];
  const dirty: Array<[number, number]> = [];
  const push = (arr: Array<[number, number]>, off: number, len: number): void => {
    const last = arr[arr.length - 1];
    if (last && last[0] + last[1] === off) last[1] += len;
    else arr.push([off, len]);
  };
  for await (const e of reader.extents(0, reader.sizeBytes)) {
    if (!e.isZero) push(data, e.offset, e.length);
    if (read === 'incremental' && e.isDirty) push(dirty, e.offset, e.length);
  }
  let di = 0;
  let ri = 0;
  const overlaps = (
    arr: Array<[number, number]>,
    idx: number,
    start: number,
    end: number,
  ): [boolean, number] => {
    while (idx < arr.length && arr[idx]![0] + arr[idx]![1] <= start) idx++;
    const e = arr[idx];
    return [e !== undefined && e[0] < end, idx];
  };
  return (_slot, offset, length) => {
    const end = offset + length;
    let isDirty = true;
    if (read === 'incremental') [isDirty, ri] = overlaps(dirty, ri, offset, end);
    if (!isDirty) return 'reuse';
    let hasData: boolean;
    [hasData, di] = overlaps(data, di, offset, end);
    return hasData ? 'read' : 'zero';
  };
}

async function backupOneDisk(
  repo: Repository,
  d: DiskPlan,
  reader: ExportReader,
  parentIndex: Awaited<ReturnType<Repository['getIndex']>> | undefined,
  plan: BackupPlan,
  opts: VmBackupOptions,
  signal: AbortSignal,
  log: Logger,
): Promise<SnapshotDisk> {
  const read = d.read === 'incremental' && parentIndex ? 'incremental' : 'full';
  const slotPlan = await planSlots(reader, read);
  log.info(
    `${printable(opts.domain)}/${d.target}: reading ${read === 'incremental' ? `changes since ${plan.baseCheckpoint}` : 'all allocated data'}`,
  );
  const r = await backupDisk(repo, {
    source: {
      sizeBytes: reader.sizeBytes,
      name: `${opts.domain}/${d.target}`,
      read: (o, l, into) => reader.read(o, l, into),
    },
    // Chunks the plan reads are read whole over NBD: bytesRead counts exactly those bytes.
    plan: slotPlan,
    parent: read === 'incremental' ? parentIndex : undefined,
    readConcurrency: 8,
    ...(opts.progressFor ? { progress: opts.progressFor(d.target) } : {}),
    signal,
  });
  const idx = await repo.putIndex(r.index);
  return {
    target: d.target,
    sizeBytes: reader.sizeBytes,
    chunkSizeBytes: repo.chunkSizeBytes,
    root: idx.id,
    sourceFormat: d.disk.format,
    source: d.disk.path,
    mode: read,
    checkpointBitmap: plan.newCheckpoint && !d.isRaw ? plan.newCheckpoint : undefined,
    allocatedBytes: r.allocatedBytes,
    stats: { ...r.stats, bytesStored: r.stats.bytesStored + idx.storedBytes, bytesMeta: idx.storedBytes },
  };
}

async function checkpointDirtyBytes(
  client: LibvirtClient,
  dom: DomainRef,
  name: string,
  disks: readonly DiskPlan[],
): Promise<number | undefined> {
  try {
    const chk = await client.lookupCheckpointByName(dom, name);
    const xml = await client.checkpointGetXml(
      chk,
      VIR_DOMAIN_CHECKPOINT_XML.VIR_DOMAIN_CHECKPOINT_XML_SIZE |
        VIR_DOMAIN_CHECKPOINT_XML.VIR_DOMAIN_CHECKPOINT_XML_NO_DOMAIN,
    );
    const info = parseCheckpointXml(xml);
    const wanted = new Set(disks.map((d) => d.target));
    let total = 0;
    let known = false;
    for (const d of info.disks) {
      if (wanted.has(d.name) && d.sizeBytes !== undefined) {
        total += d.sizeBytes;
        known = true;
      }
    }
    return known ? total : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The bytes a backup would read when libvirt gives no checkpoint size: for a disk read in full,
 * its allocated data (`qemu-img map`, also of a running domain's image: -U, read only); for a
 * shut-off disk read incrementally, the dirty bytes of its persistent bitmap (through qemu-nbd).
 * Undefined when a disk cannot be measured (no local path, qemu-img failed): then no figure is
 * better than a wrong one.
 */
async function measuredEstimate(
  plan: BackupPlan,
  active: boolean,
  opts: VmBackupOptions,
  log: Logger,
  name: string,
): Promise<{ bytes: number; kind: 'changed' | 'allocated' } | undefined> {
  let total = 0;
  let anyIncremental = false;
  let runtimeDir: string | undefined;
  try {
    for (const d of plan.disks) {
      const path = d.disk.path;
      if (!path) {
        log.info(`${name}: ${d.target} has no local path: no estimate`);
        return undefined;
      }
      const format = d.disk.format ?? 'raw';
      if (d.read === 'incremental' && !active && plan.baseCheckpoint) {
        anyIncremental = true;
        runtimeDir ??= await makeRuntimeDir(opts.scratchDir ?? '/var/tmp', RUNTIME_PREFIX, 0o700);
        const r = await opts.exports.openImage(path, format, plan.baseCheckpoint, runtimeDir);
        try {
          for await (const e of r.extents(0, r.sizeBytes)) if (e.isDirty) total += e.length;
        } finally {
          await r.close().catch(() => {});
        }
      } else if (d.read === 'full') {
        total += await allocatedBytes(path, format);
      } else return undefined; // a running domain's incremental without a checkpoint size
    }
  } catch (err) {
    log.info(`${name}: no estimate: ${errorMessage(err)}`);
    return undefined;
  } finally {
    if (runtimeDir) await fs.rm(runtimeDir, { recursive: true, force: true }).catch(() => {});
  }
  return { bytes: total, kind: anyIncremental ? 'changed' : 'allocated' };
}

/** Allocated (data, non-zero) bytes of an image as a reader of the whole disk sees them. */
async function allocatedBytes(path: string, format: string): Promise<number> {
  const out = (await exec('qemu-img', ['map', '--output=json', '-U', '-f', format, path])).stdout;
  const map = JSON.parse(out) as unknown;
  if (!Array.isArray(map)) throw new Error(`qemu-img map of ${path} gave no list`);
  let n = 0;
  for (const e of map as Array<{ length?: unknown; data?: unknown; zero?: unknown }>) {
    if (e.data === true && e.zero !== true && typeof e.length === 'number') n += e.length;
  }
  return n;
}

async function redefineCheckpoint(
  client: LibvirtClient,
  repo: Repository,
  dom: DomainRef,
  s: Snapshot,
  log: Logger,
): Promise<void> {
  const file = s.files.find((f) => f.kind === 'checkpoint-xml');
  if (!file) return;
  const xml = (await repo.getFile(file)).toString('utf8');
  try {
    await client.checkpointCreateXml(
      dom,
      xml,
      VIR_DOMAIN_CHECKPOINT_CREATE.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE,
    );
    log.info(`redefined checkpoint ${s.checkpoint} from the repository`);
  } catch (err) {
    throw new VmvaultError(
      'CHECKPOINT_REDEFINE_FAILED',
      `cannot redefine checkpoint ${s.checkpoint} from the repository: ${errorMessage(err)}`,
      {
        hint: 'start a new chain with -l full (or use -l auto)',
        cause: err,
      },
    );
  }
}

/** Domain XML, checkpoint XML and the VM's extra files (kernel, initrd, loader, nvram). */
async function collectFiles(
  client: LibvirtClient,
  repo: Repository,
  dom: DomainRef,
  model: DomainModel,
  plan: BackupPlan,
  active: boolean,
  log: Logger,
): Promise<SnapshotFile[]> {
  const files: SnapshotFile[] = [];
  const inactiveXml = await client
    .getDomainXml(dom, VIR_DOMAIN_XML.VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML.VIR_DOMAIN_XML_SECURE)
    .catch(() => client.getDomainXml(dom, VIR_DOMAIN_XML.VIR_DOMAIN_XML_INACTIVE));
  files.push(await repo.putFile('domain-xml', `${model.name}.xml`, Buffer.from(inactiveXml)));
  if (plan.newCheckpoint) {
    const chk = await client.lookupCheckpointByName(dom, plan.newCheckpoint);
    const xml = await client.checkpointGetXml(chk, 0);
    files.push(await repo.putFile('checkpoint-xml', `${plan.newCheckpoint}.xml`, Buffer.from(xml)));
  }
  for (const f of model.extraFiles) {
    try {
      const data = await fs.readFile(f.path);
      files.push(await repo.putFile(f.role, f.path, data));
    } catch (err) {
      log.warn(`${model.name}: cannot read ${f.role} file ${f.path}: ${errorMessage(err)} (not saved)`);
    }
  }
  void active;
  return files;
}
