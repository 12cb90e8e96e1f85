import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  LibvirtClient,
  VIR_DOMAIN_CHECKPOINT_CREATE,
  VIR_DOMAIN_CHECKPOINT_DELETE,
  VIR_DOMAIN_CHECKPOINT_LIST,
  VIR_DOMAIN_JOB_OPERATION,
  VIR_DOMAIN_JOB_STATS,
  buildCheckpointXml,
  buildPullBackupXml,
  isNoDomainBackup,
  isNoDomainCheckpoint,
  parseBackupXml,
  parseCheckpointXml,
  type DomainEventSubscription,
  type JobCompletedEvent,
} from '../../src/libvirt/index.js';
import { exec } from '../../src/util/index.js';
import { createTestDomain, guestWrite, type TestDomain } from '../helpers/domains.js';
import { libvirtSkipReason, libvirtUri } from '../helpers/libvirtd.js';
import { hasTool } from '../helpers/tools.js';

const uri = libvirtUri();
const skip = libvirtSkipReason() || (hasTool('nbdinfo') ? '' : 'nbdinfo is not installed');
if (skip) console.warn(`skipping libvirt backup tests: ${skip}`);
if (skip && uri && process.env.VMVAULT_TEST_STRICT === '1') throw new Error(skip);

const KiB = 1024;
const MiB = 1024 * KiB;

interface Extent {
  offset: number;
  length: number;
  type: number;
  description: string;
}

async function nbdMap(socket: string, exportName: string, context?: string): Promise<Extent[]> {
  const args = [context ? `--map=${context}` : '--map', `nbd+unix:///${exportName}?socket=${socket}`];
  const { stdout } = await exec('nbdinfo', args);
  return stdout
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(\d+)\s*(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({
      offset: Number(m[1]),
      length: Number(m[2]),
      type: Number(m[3]),
      description: m[4]!.trim(),
    }));
}

async function nbdExports(socket: string): Promise<string[]> {
  const { stdout } = await exec('nbdinfo', ['--list', '--json', `nbd+unix:///?socket=${socket}`]);
  const doc = JSON.parse(stdout) as { exports: Array<{ 'export-name': string }> };
  return doc.exports.map((e) => e['export-name']).sort();
}

describe.skipIf(!!skip)('checkpoints and pull-mode backups against a private libvirtd', () => {
  let client: LibvirtClient;
  let td: TestDomain;
  let events: DomainEventSubscription;

  beforeAll(async () => {
    client = await LibvirtClient.connect(uri);
    td = await createTestDomain(client, {
      disks: [{ format: 'qcow2' }, { format: 'raw', sizeBytes: 8 * MiB }],
    });
    events = await client.subscribe({ kinds: ['job-completed'], domain: td.dom });
  });

  afterAll(async () => {
    await events?.close();
    await td?.cleanup();
    await client?.close();
  });

  it('creates, lists, looks up, redefines and deletes checkpoints', async () => {
    const disks = [{ name: 'vda' }, { name: 'vdb', checkpoint: 'no' as const }];
    const c0 = await client.checkpointCreateXml(
      td.dom,
      buildCheckpointXml({ name: 'c0', description: 'first <one> & "only"', disks }),
    );
    expect(c0.name).toBe('c0');
    expect(c0.domain.uuid).toBe(td.dom.uuid);
    const c1 = await client.checkpointCreateXml(td.dom, buildCheckpointXml({ name: 'c1', disks }));

    const listed = await client.listAllCheckpoints(
      td.dom,
      VIR_DOMAIN_CHECKPOINT_LIST.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
    );
    expect(listed.map((c) => c.name)).toEqual(['c0', 'c1']);
    expect((await client.lookupCheckpointByName(td.dom, 'c1')).name).toBe('c1');
    expect(
      isNoDomainCheckpoint(await client.lookupCheckpointByName(td.dom, 'nope').catch((e: unknown) => e)),
    ).toBe(true);
    expect(await client.checkpointGetParent(c0)).toBeNull();
    expect((await client.checkpointGetParent(c1))?.name).toBe('c0');
    expect((await client.listCheckpointChildren(c0)).map((c) => c.name)).toEqual(['c1']);

    const info0 = parseCheckpointXml(await client.checkpointGetXml(c0));
    expect(info0.description).toBe('first <one> & "only"');
    expect(info0.disks).toEqual([
      { name: 'vda', checkpoint: 'bitmap', bitmap: 'c0' },
      { name: 'vdb', checkpoint: 'no' },
    ]);
    const xml1 = await client.checkpointGetXml(c1);
    const info1 = parseCheckpointXml(xml1);
    expect(info1.parent).toBe('c0');
    expect(info1.creationTime).toBeGreaterThan(1_600_000_000);

    // Drop only the metadata (the bitmap stays in the image), then bring it back with REDEFINE.
    await client.checkpointDelete(
      c1,
      VIR_DOMAIN_CHECKPOINT_DELETE.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY,
    );
    expect((await client.listAllCheckpoints(td.dom)).map((c) => c.name)).toEqual(['c0']);
    const redefined = await client.checkpointCreateXml(
      td.dom,
      xml1,
      VIR_DOMAIN_CHECKPOINT_CREATE.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE |
        VIR_DOMAIN_CHECKPOINT_CREATE.VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE,
    );
    expect(redefined.name).toBe('c1');
    expect((await client.checkpointGetParent(redefined))?.name).toBe('c0');
    expect((await client.listAllCheckpoints(td.dom)).map((c) => c.name).sort()).toEqual(['c0', 'c1']);

    await client.checkpointDelete(c0, VIR_DOMAIN_CHECKPOINT_DELETE.VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN);
    expect(await client.listAllCheckpoints(td.dom)).toEqual([]);
  });

  it('runs a full and then an incremental pull-mode backup, exported over NBD', async () => {
    const socket = join(td.dir, 'backup.sock');
    const scratch = (n: string): string => join(td.dir, `scratch-${n}-${Date.now()}.qcow2`);
    const cpDisks = [{ name: 'vda' }, { name: 'vdb', checkpoint: 'no' as const }];

    await guestWrite(client, td, { disk: 'vda', offset: 0, length: 64 * KiB, pattern: 0x11 });

    // Full backup, starting checkpoint b1.
    await client.backupBegin(
      td.dom,
      buildPullBackupXml({
        server: { transport: 'unix', socket },
        disks: [
          { name: 'vda', backupMode: 'full', scratchFile: scratch('vda'), scratchFormat: 'qcow2' },
          { name: 'vdb', backupMode: 'full', scratchFile: scratch('vdb'), scratchFormat: 'qcow2' },
        ],
      }),
      buildCheckpointXml({ name: 'b1', disks: cpDisks }),
    );
    const full = parseBackupXml(await client.backupGetXml(td.dom));
    expect(full.mode).toBe('pull');
    expect(full.server).toEqual({ transport: 'unix', socket });
    expect(full.disks.filter((d) => d.backup).map((d) => d.exportName ?? d.name)).toEqual(['vda', 'vdb']);
    expect(await nbdExports(socket)).toEqual(['vda', 'vdb']);

    const info = await client.getJobInfo(td.dom);
    expect(['bounded', 'unbounded']).toContain(info.type);
    const running = await client.getJobStats(td.dom);
    expect(running.operation).toBe(VIR_DOMAIN_JOB_OPERATION.VIR_DOMAIN_JOB_OPERATION_BACKUP);

    const alloc = await nbdMap(socket, 'vda');
    const first = alloc[0]!;
    expect(first.offset).toBe(0);
    expect(first.type & 1).toBe(0); // the written cluster is allocated (not a hole)

    await client.abortJob(td.dom);
    const done = (await events.waitFor((e) => e.kind === 'job-completed', {
      timeoutMs: 30_000,
    })) as JobCompletedEvent;
    expect(done.domain.name).toBe(td.name);
    expect(done.stats.operation).toBe(VIR_DOMAIN_JOB_OPERATION.VIR_DOMAIN_JOB_OPERATION_BACKUP);
    const completed = await client.getJobStats(td.dom, VIR_DOMAIN_JOB_STATS.VIR_DOMAIN_JOB_STATS_COMPLETED);
    expect(completed.operation).toBe(VIR_DOMAIN_JOB_OPERATION.VIR_DOMAIN_JOB_OPERATION_BACKUP);
    expect(isNoDomainBackup(await client.backupGetXml(td.dom).catch((e: unknown) => e))).toBe(true);

    // The guest writes 256 KiB at 2 MiB; the incremental since b1 must show exactly that.
    await guestWrite(client, td, { disk: 'vda', offset: 2 * MiB, length: 256 * KiB, pattern: 0xcd });
    await client.backupBegin(
      td.dom,
      buildPullBackupXml({
        server: { transport: 'unix', socket },
        incremental: 'b1',
        disks: [
          {
            name: 'vda',
            backupMode: 'incremental',
            incremental: 'b1',
            scratchFile: scratch('vda'),
            scratchFormat: 'qcow2',
          },
          { name: 'vdb', backupMode: 'full', scratchFile: scratch('vdb'), scratchFormat: 'qcow2' },
        ],
      }),
      buildCheckpointXml({ name: 'b2', disks: cpDisks }),
    );
    const inc = parseBackupXml(await client.backupGetXml(td.dom));
    const vda = inc.disks.find((d) => d.name === 'vda')!;
    expect(vda.backupMode).toBe('incremental');
    expect(vda.incremental).toBe('b1');
    expect(vda.exportBitmap ?? 'backup-vda').toBe('backup-vda');
    const dirty = (await nbdMap(socket, 'vda', 'qemu:dirty-bitmap:backup-vda')).filter((e) => e.type === 1);
    expect(dirty.map((e) => [e.offset, e.length])).toEqual([[2 * MiB, 256 * KiB]]);

    await client.abortJob(td.dom);
    await events.waitFor((e) => e.kind === 'job-completed', { timeoutMs: 30_000 });
    const cps = await client.listAllCheckpoints(
      td.dom,
      VIR_DOMAIN_CHECKPOINT_LIST.VIR_DOMAIN_CHECKPOINT_LIST_TOPOLOGICAL,
    );
    expect(cps.map((c) => c.name)).toEqual(['b1', 'b2']);
    expect((await client.checkpointGetParent(cps[1]!))?.name).toBe('b1');
  });
});
