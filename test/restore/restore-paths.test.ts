import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Repository, type Snapshot, type SnapshotDisk, type SnapshotFile } from '../../src/repo/index.js';
import { createQcow2Writer, makeSinkFactory, restoreSnapshot } from '../../src/restore/index.js';
import { UnsafePathError, VmvaultError } from '../../src/util/index.js';
import { runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const run = requireTools(['qemu-img']);

/** Every file under `root`, relative to it. */
async function tree(root: string): Promise<string[]> {
  const entries = await readdir(root, { recursive: true, withFileTypes: true });
  return entries
    .filter((e) => !e.isDirectory())
    .map((e) => relative(root, join(e.parentPath, e.name)))
    .sort();
}

/**
 * Output paths built from names in a snapshot, at the library level: the snapshots are built in
 * memory with hostile names, so manifest validation (which would refuse them on read) is bypassed
 * and the restore's own path building is what is tested.
 */
describe.runIf(run)('restoreSnapshot never writes outside its output directory', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let repo: Repository;
  let snap: Snapshot;
  let xmlFile: SnapshotFile;
  let nvram: SnapshotFile;
  let base: string; // everything the tests write is under here; `out` is base/a/b/out
  let before: string[];
  let n = 0;

  const XML = `<domain type='kvm'><name>web1</name><os><type>hvm</type>
<nvram>/var/lib/libvirt/qemu/nvram/web1_VARS.fd</nvram></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/images/web1.qcow2'/><target dev='vda' bus='virtio'/></disk>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/images/web1b.qcow2'/><target dev='vdb' bus='virtio'/></disk>
</devices></domain>`;

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-restore-paths-'));
    const img = join(dir, 'd.raw');
    const data = Buffer.alloc(2 * MiB);
    seededBytes(MiB, 3).copy(data, MiB);
    await writeFile(img, data);
    const repoPath = join(dir, 'repo');
    expect((await runCli(['init', repoPath])).code).toBe(0);
    const b = await runCli(['backup-image', '-r', repoPath, '--vm', 'web1', `${img}:vda`, '--json']);
    expect(b.code, b.stderr).toBe(0);
    repo = await Repository.open(repoPath);
    snap = await repo.getSnapshot((JSON.parse(b.stdout) as { snapshot: string }).snapshot);
    xmlFile = await repo.putFile('domain-xml', 'web1.xml', Buffer.from(XML));
    nvram = await repo.putFile('nvram', '/var/lib/libvirt/qemu/nvram/web1_VARS.fd', Buffer.from('vars'));
    await repo.chunks.flush();
    base = join(dir, 'base');
    await mkdir(join(base, 'a', 'b'), { recursive: true });
    await writeFile(join(base, 'a', 'keep'), 'untouched');
    before = await tree(base);
  });
  afterAll(async () => {
    await repo?.close();
    await cleanup();
  });

  const crafted = (disks: Array<Partial<SnapshotDisk>>, extra: Partial<Snapshot> = {}): Snapshot => ({
    ...snap,
    disks: disks.map((d) => ({ ...snap.disks[0]!, ...d })),
    files: [xmlFile, nvram],
    ...extra,
  });
  const restore = (s: Snapshot, opts: { config?: boolean; name?: string } = {}) => {
    const out = join(base, 'a', 'b', `out${n++}`);
    return {
      out,
      run: restoreSnapshot(repo, s, {
        output: out,
        config: opts.config ?? false,
        ...(opts.name ? { name: opts.name } : {}),
        sinks: makeSinkFactory((p, size) => createQcow2Writer(p, size)),
      }),
    };
  };
  /** Fails with a one-line UnsafePathError, and nothing was written anywhere. */
  const refused = async (s: Snapshot, opts: { config?: boolean } = {}): Promise<void> => {
    const { out, run: p } = restore(s, opts);
    const err = await p.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnsafePathError);
    const line = (err as VmvaultError).oneLine();
    expect(line).not.toMatch(/\n/);
    expect(line).toMatch(/^refusing to write '.*' outside .*; .*vmvault check/);
    expect(await tree(base)).toEqual(before);
    expect(await readFile(join(base, 'a', 'keep'), 'utf8')).toBe('untouched');
    void out;
  };

  it('refuses a disk target that climbs out, is absolute or is not a plain name', async () => {
    for (const target of ['../../x', '../keep', `${base}/a/abs`, '/tmp/x', 'a/../../b', '..', '.', ''])
      await refused(crafted([{ target }]));
    // A hostile target after a good one: the good disk is not written either.
    await refused(crafted([{ target: 'vda' }, { target: '../../x' }]));
  });

  it('refuses a stored file whose name is no file name, and keeps a host path to its last part', async () => {
    for (const name of ['..', '/', 'a/..', '.', '', 'x\0y'])
      await refused(crafted([{ target: 'vda' }], { files: [xmlFile, { ...nvram, name }] }), {
        config: true,
      });
    // A stored host path (what live backups write) lands in the directory under its last part.
    const { out, run: p } = restore(
      crafted([{ target: 'vda' }], { files: [xmlFile, { ...nvram, name: '/../../../x/../../evil' }] }),
      { config: true },
    );
    await p;
    expect(await tree(out)).toEqual(['evil', 'restore_web1.xml', 'vda.qcow2']);
    expect(await tree(base)).toEqual(
      [
        ...before,
        ...['evil', 'restore_web1.xml', 'vda.qcow2'].map((f) => relative(base, join(out, f))),
      ].sort(),
    );
    before = await tree(base);
  });

  it('a hostile VM name or --name only ever names a file inside the directory', async () => {
    for (const [vm, name] of [
      ['../../x', undefined],
      ['/etc/passwd', undefined],
      ['web1', '../../y'],
      ['web1', `${base}/a/z`],
      ['..', '..'],
    ] as const) {
      const { out, run: p } = restore(crafted([{ target: 'vda' }], { vm: { name: vm } }), {
        config: true,
        ...(name ? { name } : {}),
      });
      const r = await p;
      const files = await tree(out);
      expect(files).toHaveLength(3);
      expect(r.configPath!.startsWith(`${out}/`)).toBe(true);
      expect(relative(out, r.configPath!)).not.toMatch(/\//);
      before = await tree(base);
    }
    expect(before.filter((f) => !f.startsWith('a/b/out'))).toEqual(['a/keep']);
  });

  it('the restored domain XML points at exactly the files written', async () => {
    const { out, run: p } = restore(crafted([{ target: 'vda' }, { target: 'vdb' }]), { config: true });
    const r = await p;
    const xml = await readFile(r.configPath!, 'utf8');
    const sources = [...xml.matchAll(/<source file="([^"]+)"/g)].map((m) => m[1]);
    expect(sources).toEqual([join(out, 'vda.qcow2'), join(out, 'vdb.qcow2')]);
    expect(r.disks.map((d) => d.path)).toEqual(sources);
    expect(xml).toContain(`<nvram>${join(out, 'web1_VARS.fd')}</nvram>`);
    expect(await tree(out)).toEqual(['restore_web1.xml', 'vda.qcow2', 'vdb.qcow2', 'web1_VARS.fd']);
    before = await tree(base);
  });

  it('two disks or files with the same name are refused before anything is written', async () => {
    const { out, run: p } = restore(crafted([{ target: 'vda' }, { target: 'vda' }]));
    await expect(p).rejects.toMatchObject({ code: 'OUTPUT_CONFLICT' });
    await expect(readdir(out)).rejects.toMatchObject({ code: 'ENOENT' });
    const { out: out2, run: p2 } = restore(
      crafted([{ target: 'vda' }], { files: [xmlFile, { ...nvram, name: '/x/vda.qcow2' }] }),
      { config: true },
    );
    await expect(p2).rejects.toMatchObject({ code: 'OUTPUT_CONFLICT' });
    await expect(readdir(out2)).rejects.toMatchObject({ code: 'ENOENT' });
    expect(await tree(base)).toEqual(before);
  });
});
