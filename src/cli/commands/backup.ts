import { Command, Option } from 'commander';
import {
  ExitCode,
  errorMessage,
  formatBytes,
  parseSize,
  UsageError,
  VmvaultError,
  isVmvaultError,
  isSafeVmName,
  NAME_RULES,
  printable,
} from '../../util/index.js';
import {
  BACKUP_LEVELS,
  BACKUP_METHODS,
  backupDomain,
  nbdExports,
  type BackupLevel,
  type BackupMethod,
  type VmBackupResult,
} from '../../backup/index.js';
import { LibvirtClient, parseLibvirtUri, VIR_CONNECT_LIST_DOMAINS } from '../../libvirt/index.js';
import { shortId } from '../../repo/index.js';
import { commaList, globals, keepSummary, loggerFor, printJson, repoOption, withRepo } from '../context.js';
import { logLine } from '../events.js';
import { makeProgress } from '../progress-tty.js';
import { rootAbort } from '../signals.js';
import { printSummary } from './backup-image.js';

interface BackupFlags {
  domain?: string[];
  all?: boolean;
  level: BackupLevel;
  method: BackupMethod;
  connect: string;
  include?: string[];
  exclude?: string[];
  raw?: boolean;
  freeze: boolean | string;
  estimate?: boolean;
  threshold?: string;
  workers: string;
  killStaleJob?: boolean;
  tag?: string[];
  json?: boolean;
  scratchdir?: string;
  repo?: string;
}

export function backupCommand(): Command {
  return new Command('backup')
    .description('back up libvirt domains (live: pull-mode backup job with a checkpoint; shut off: qemu-nbd)')
    .option('-d, --domain <name>', 'domain to back up (repeatable)', commaList)
    .option('--all', 'back up every domain of the connection')
    .addOption(
      new Option('-l, --level <level>', 'auto, full, inc, diff or copy')
        .choices(BACKUP_LEVELS)
        .default('auto'),
    )
    .addOption(
      new Option(
        '--method <method>',
        'running domains: auto (the backup API, else snapshot), pull (backup API job) or snapshot (overlay, copy, block commit; copy only)',
      )
        .choices(BACKUP_METHODS)
        .default('auto'),
    )
    .option(
      '-c, --connect <uri>',
      'libvirt connection URI',
      process.env.LIBVIRT_DEFAULT_URI ?? 'qemu:///system',
    )
    .option('-i, --include <disk>', 'only these disks (repeatable or comma separated)', commaList)
    .option('-x, --exclude <disk>', 'skip these disks (repeatable or comma separated)', commaList)
    .option('--raw', 'include raw disks (read in full every time)')
    .option(
      '--freeze [mountpoints]',
      'freeze guest filesystems around the job start (default: all; comma separated list)',
      true,
    )
    .option('--no-freeze', 'do not freeze guest filesystems')
    .option('--estimate', 'print how much changed since the last checkpoint and exit')
    .option('--threshold <bytes>', 'skip the backup when less than this changed')
    .option('-w, --workers <n>', 'disks read in parallel', '1')
    .option(
      '--kill-stale-job',
      "abort a leftover backup job of the domain (or commit a killed run's overlays) first",
    )
    .option('--tag <tag>', 'tag for the snapshot (repeatable)', commaList)
    .option('--scratchdir <dir>', 'where the NBD socket and scratch files go', '/var/tmp')
    .option('--json', 'print a JSON summary')
    .addOption(repoOption())
    .action(async (opts: BackupFlags, cmd: Command) => {
      if (!opts.all && !opts.domain?.length)
        throw new UsageError('no domain given', 'pass -d DOMAIN (repeatable) or --all');
      for (const d of opts.domain ?? [])
        if (!isSafeVmName(d))
          throw new UsageError(`invalid domain name '${printable(d, 80)}'`, `${NAME_RULES.vm} (-d)`);
      const workers = Number(opts.workers);
      if (!Number.isInteger(workers) || workers < 1)
        throw new UsageError(`invalid --workers '${opts.workers}'`, 'use a whole number from 1');
      if (opts.method === 'snapshot' && ['full', 'inc', 'diff'].includes(opts.level))
        throw new UsageError(
          `-l ${opts.level} needs checkpoints, which --method snapshot cannot create (copy backups only)`,
          'use -l copy (or -l auto) with --method snapshot, or --method pull',
        );
      const threshold = opts.threshold === undefined ? undefined : parseSize(opts.threshold, 'threshold');
      const log = loggerFor(cmd);
      const quiet = (globals(cmd).quiet ?? false) || opts.json === true;
      const target = parseLibvirtUri(opts.connect);
      if (target.host && !['localhost', '127.0.0.1', '::1'].includes(target.host)) {
        // The backup job's NBD socket, scratch files and the VM's files live on that host.
        throw new UsageError(
          `backups of domains on another host (${target.host}) are not supported yet`,
          'run vmvault on the hypervisor host itself, with a repository both can reach',
        );
      }
      const client = await LibvirtClient.connect(opts.connect);
      const results: Array<VmBackupResult | { domain: string; error: VmvaultError | Error }> = [];
      /** Seconds each domain's backup took (--json `durationSeconds`, the metrics file). */
      const seconds = new Map<string, number>();
      try {
        const domains = opts.all
          ? (
              await client.listAllDomains(
                VIR_CONNECT_LIST_DOMAINS.VIR_CONNECT_LIST_DOMAINS_ACTIVE |
                  VIR_CONNECT_LIST_DOMAINS.VIR_CONNECT_LIST_DOMAINS_INACTIVE,
              )
            ).map((d) => d.name)
          : opts.domain!;
        await withRepo(opts, async (repo) => {
          for (const domain of domains) {
            if (rootAbort.signal.aborted) break;
            const started = Date.now();
            const took = (): void => void seconds.set(domain, (Date.now() - started) / 1000);
            try {
              const r = await backupDomain(client, repo, {
                domain,
                level: opts.level,
                method: opts.method,
                include: opts.include ?? [],
                exclude: opts.exclude ?? [],
                raw: opts.raw ?? false,
                freeze: opts.freeze !== false,
                freezeMountpoints:
                  typeof opts.freeze === 'string' ? opts.freeze.split(',').filter(Boolean) : [],
                estimate: opts.estimate ?? false,
                ...(threshold !== undefined ? { thresholdBytes: threshold } : {}),
                workers,
                killStaleJob: opts.killStaleJob ?? false,
                tags: opts.tag ?? [],
                ...(opts.scratchdir ? { scratchDir: opts.scratchdir } : {}),
                exports: nbdExports(),
                logger: log,
                progressFor: (t) => makeProgress(`${domain}/${t}`, process.stderr, quiet, { reads: true }),
                signal: rootAbort.signal,
              });
              took();
              results.push(r);
              if (!opts.json) report(r);
            } catch (err) {
              took();
              if (domains.length === 1 || rootAbort.signal.aborted) throw err;
              results.push({ domain, error: err as Error });
              const line = `${domain}: ${isVmvaultError(err) ? err.oneLine() : errorMessage(err)}`;
              logLine(`error: ${line}`);
              process.stderr.write(`vmvault: ${printable(line, 600)}\n`);
            }
          }
        });
      } finally {
        await client.close();
      }
      const json = results.map((r) => jsonResult(r, seconds.get(r.domain)));
      if (opts.json) printJson(json);
      else keepSummary(json);
      const failed = results.filter((r) => 'error' in r);
      if (failed.length) {
        throw new VmvaultError(
          'PARTIAL',
          `${failed.length} of ${results.length} domains failed: ${failed.map((f) => f.domain).join(', ')}`,
          { exitCode: ExitCode.PARTIAL },
        );
      }
    });
}

function report(r: VmBackupResult): void {
  if (r.snapshot) {
    process.stdout.write(
      `${r.domain}: ${r.plan.mode} backup${r.method === 'snapshot' ? ' (external snapshot, block commit)' : ''}${r.plan.baseCheckpoint ? ` since ${r.plan.baseCheckpoint}` : ''}${r.plan.newCheckpoint ? `, new checkpoint ${r.plan.newCheckpoint}` : ''}\n`,
    );
    printSummary(r.snapshot);
  } else if (r.skippedReason) process.stdout.write(`${r.domain}: ${r.skippedReason}\n`);
  else if (r.estimateBytes !== undefined && r.estimateKind === 'allocated') {
    process.stdout.write(
      `${r.domain}: a ${r.plan.mode} backup would read about ${formatBytes(r.estimateBytes)} (${r.estimateBytes} bytes of allocated data)\n`,
    );
  } else if (r.estimateBytes !== undefined) {
    process.stdout.write(
      `${r.domain}: about ${formatBytes(r.estimateBytes)} (${r.estimateBytes} bytes) changed since ${r.plan.baseCheckpoint ?? 'the last checkpoint'}\n`,
    );
  } else
    process.stdout.write(
      `${r.domain}: no estimate available (${r.plan.mode} backup would read every allocated block)\n`,
    );
}

function jsonResult(
  r: VmBackupResult | { domain: string; error: Error },
  durationSeconds: number | undefined,
): Record<string, unknown> {
  const took = durationSeconds === undefined ? {} : { durationSeconds };
  if ('error' in r)
    return {
      domain: r.domain,
      error: isVmvaultError(r.error)
        ? { code: r.error.code, message: r.error.oneLine() }
        : { message: r.error.message },
      ...took,
    };
  return {
    domain: r.domain,
    ...took,
    method: r.method,
    mode: r.plan.mode,
    baseCheckpoint: r.plan.baseCheckpoint,
    checkpoint: r.plan.newCheckpoint,
    snapshot: r.snapshot?.id ?? null,
    short_id: r.snapshot ? shortId(r.snapshot.id) : null,
    estimateBytes: r.estimateBytes ?? null,
    estimateKind: r.estimateKind ?? null,
    skipped: r.plan.skipped,
    notes: r.plan.notes,
    skippedReason: r.skippedReason ?? null,
    disks:
      r.snapshot?.disks.map((d) => ({
        target: d.target,
        mode: d.mode,
        sizeBytes: d.sizeBytes,
        allocatedBytes: d.allocatedBytes,
        ...d.stats,
      })) ?? [],
  };
}
