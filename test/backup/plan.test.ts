import { describe, expect, it } from 'vitest';
import { planBackup, type PlanInput } from '../../src/backup/index.js';
import type { DomainDisk } from '../../src/libvirt/index.js';
import { emptyDiskStats, type Snapshot } from '../../src/repo/index.js';

const disk = (target: string, format = 'qcow2', device: DomainDisk['device'] = 'disk'): DomainDisk => ({
  target,
  device,
  type: 'file',
  format,
  path: `/img/${target}.${format}`,
  readOnly: false,
  shareable: false,
  backingChain: [],
});

let t = 0;
function snap(
  mode: string,
  checkpoint: string | null,
  disks: Array<[string, string | undefined]>,
  withXml = true,
): Snapshot {
  t++;
  return {
    id: `${t}`.padStart(64, '0'),
    version: 2,
    vm: { name: 'vm1', uuid: 'u' },
    time: new Date(Date.UTC(2026, 0, 1, 0, t)).toISOString(),
    host: 'h',
    tags: [],
    parent: null,
    mode,
    checkpoint,
    disks: disks.map(([target, bitmap]) => ({
      target,
      sizeBytes: 1,
      chunkSizeBytes: 1,
      root: 'i',
      allocatedBytes: 0,
      checkpointBitmap: bitmap,
      stats: emptyDiskStats(),
    })),
    files:
      withXml && checkpoint
        ? [{ kind: 'checkpoint-xml', name: `${checkpoint}.xml`, sizeBytes: 1, chunks: [] }]
        : [],
    program: 'x',
  } as unknown as Snapshot;
}

const P = 'vmvault.abcdef12.';
function input(over: Partial<PlanInput>): PlanInput {
  return {
    level: 'auto',
    domainName: 'vm1',
    isActive: true,
    disks: [disk('vda')],
    history: [],
    libvirtCheckpoints: [],
    checkpointPrefix: P,
    newCheckpointName: `${P}new`,
    ...over,
  };
}

describe('backup planning', () => {
  it('auto: full without a chain, inc with one', () => {
    const first = planBackup(input({}));
    expect(first.mode).toBe('full');
    expect(first.newCheckpoint).toBe(`${P}new`);
    const full = snap('full', `${P}1`, [['vda', `${P}1`]]);
    const next = planBackup(input({ history: [full], libvirtCheckpoints: [`${P}1`] }));
    expect(next).toMatchObject({
      mode: 'inc',
      baseCheckpoint: `${P}1`,
      newCheckpoint: `${P}new`,
      parent: full,
      redefine: [],
    });
    expect(next.disks[0]!.read).toBe('incremental');
  });

  it('inc continues from the last checkpoint, diff from the last full (without a new checkpoint)', () => {
    const full = snap('full', `${P}a`, [['vda', `${P}a`]]);
    const inc = snap('inc', `${P}b`, [['vda', `${P}b`]]);
    const libvirt = [`${P}a`, `${P}b`];
    expect(
      planBackup(input({ level: 'inc', history: [full, inc], libvirtCheckpoints: libvirt })),
    ).toMatchObject({ baseCheckpoint: `${P}b`, parent: inc });
    expect(
      planBackup(input({ level: 'diff', history: [full, inc], libvirtCheckpoints: libvirt })),
    ).toMatchObject({
      mode: 'diff',
      baseCheckpoint: `${P}a`,
      parent: full,
      newCheckpoint: null,
    });
  });

  it('full removes this repository’s older checkpoints only, after success', () => {
    const p = planBackup(
      input({ level: 'full', libvirtCheckpoints: [`${P}old`, 'other-tool.1', 'vmvault.99999999.x'] }),
    );
    expect(p.deleteAfterSuccess).toEqual([`${P}old`]);
  });

  it('copy never touches checkpoints; a shut-off full becomes copy', () => {
    expect(planBackup(input({ level: 'copy', libvirtCheckpoints: [`${P}x`] }))).toMatchObject({
      mode: 'copy',
      newCheckpoint: null,
      deleteAfterSuccess: [],
    });
    const off = planBackup(input({ level: 'full', isActive: false }));
    expect(off.mode).toBe('copy');
    expect(off.notes.join()).toMatch(/shut off/);
  });

  it('a shut-off inc reads the persistent bitmap and creates no checkpoint', () => {
    const full = snap('full', `${P}a`, [['vda', `${P}a`]]);
    const p = planBackup(
      input({ level: 'inc', isActive: false, history: [full], libvirtCheckpoints: [`${P}a`] }),
    );
    expect(p).toMatchObject({ mode: 'inc', baseCheckpoint: `${P}a`, newCheckpoint: null });
  });

  it('checkpoints lost by libvirt are redefined from the repository, parents first', () => {
    const full = snap('full', `${P}a`, [['vda', `${P}a`]]);
    const inc = snap('inc', `${P}b`, [['vda', `${P}b`]]);
    const p = planBackup(input({ history: [inc, full], libvirtCheckpoints: [] }));
    expect(p.mode).toBe('inc');
    expect(p.redefine.map((s) => s.checkpoint)).toEqual([`${P}a`, `${P}b`]);
  });

  it('auto falls back to full with a note when the chain cannot be redefined; inc refuses', () => {
    const full = snap('full', `${P}a`, [['vda', `${P}a`]], false);
    const p = planBackup(input({ history: [full], libvirtCheckpoints: [] }));
    expect(p.mode).toBe('full');
    expect(p.notes.join()).toMatch(/cannot be redefined/);
    expect(() => planBackup(input({ level: 'inc', history: [full] }))).toThrow(/gone from libvirt/);
    expect(() => planBackup(input({ level: 'inc', history: [] }))).toThrow(/no full backup/);
  });

  it('per-disk modes: hot-plugged disk in full, raw disks only with --raw, cdrom skipped, include/exclude', () => {
    const full = snap('full', `${P}a`, [['vda', `${P}a`]]);
    const disks = [disk('vda'), disk('vdb'), disk('vdc', 'raw'), disk('sda', 'raw', 'cdrom')];
    const p = planBackup(input({ disks, history: [full], libvirtCheckpoints: [`${P}a`] }));
    expect(p.disks.map((d) => [d.target, d.read])).toEqual([
      ['vda', 'incremental'],
      ['vdb', 'full'],
    ]);
    expect(p.skipped.map((s) => s.target)).toEqual(['vdc', 'sda']);
    expect(p.notes.join()).toMatch(/vdb has no bitmap/);
    const withRaw = planBackup(
      input({ disks, includeRaw: true, history: [full], libvirtCheckpoints: [`${P}a`] }),
    );
    expect(withRaw.disks.find((d) => d.target === 'vdc')).toMatchObject({ read: 'full', isRaw: true });
    expect(planBackup(input({ disks, exclude: ['vdb'] })).disks.map((d) => d.target)).toEqual(['vda']);
    expect(planBackup(input({ disks, include: ['vdb'] })).disks.map((d) => d.target)).toEqual(['vdb']);
    expect(() => planBackup(input({ disks, include: ['vdz'] }))).toThrow(/has no disk 'vdz'/);
    expect(() => planBackup(input({ disks: [disk('vdc', 'raw')] }))).toThrow(/no disk .* can be backed up/);
  });
});

describe('names from the domain XML are checked before anything runs', () => {
  it('a disk target . or .. (or any name outside the disk-name rules) is refused, unless it is excluded', () => {
    for (const target of ['.', '..', '../x', 'a b', 'v\n']) {
      expect(() => planBackup(input({ disks: [disk('vda'), disk(target)] }))).toThrow(
        /has a disk named '.*', which vmvault cannot store \(a disk name is 1 to 32/,
      );
      const p = planBackup(input({ disks: [disk('vda'), disk(target)], exclude: [target] }));
      expect(p.disks.map((d) => d.target)).toEqual(['vda']);
    }
  });
  it('a domain name with a newline or escape sequence is refused with its characters made visible', () => {
    expect(() => planBackup(input({ domainName: 'evil\n\u001b[2J' }))).toThrow(
      /domain name 'evil\\x0a\\x1b\[2J' cannot be stored by vmvault/,
    );
    expect(() => planBackup(input({ domainName: '..' }))).toThrow(/cannot be stored/);
  });
});
