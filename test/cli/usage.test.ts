import { mkdir, open, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir, seededBytes } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

const MiB = 1024 * 1024;

describe('usage errors take the one error path', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown command', ['frobnicate'], /^vmvault: unknown command 'frobnicate'; run 'vmvault --help'$/],
    ['unknown global option', ['--bogus'], /^vmvault: unknown option '--bogus'; run 'vmvault --help'$/],
    [
      'unknown option, with the suggestion on the same line',
      ['snapshots', '--jsn'],
      /^vmvault: unknown option '--jsn' \(Did you mean --json\?\); run 'vmvault snapshots --help'$/,
    ],
    [
      'missing argument',
      ['restore', '-o', '/nonexistent'],
      /^vmvault: missing required argument 'snapshot'; run 'vmvault restore --help'$/,
    ],
    [
      'missing required option',
      ['backup-image', 'a.raw'],
      /^vmvault: required option '--vm <name>' not specified; run 'vmvault backup-image --help'$/,
    ],
    [
      'too many arguments',
      ['snapshots', 'extra'],
      /^vmvault: too many arguments for 'snapshots'\. Expected 0 arguments but got 1; run 'vmvault snapshots --help'$/,
    ],
    [
      'bad choice',
      ['restore', 'x', '-o', '/nonexistent', '--format', 'vmdk'],
      /^vmvault: option '--format <format>' argument 'vmdk' is invalid\. Allowed choices are qcow2, raw; run 'vmvault restore --help'$/,
    ],
  ];
  for (const [what, args, line] of cases)
    it(`${what}: one line, exit 2; with --json the exit_error line follows`, async () => {
      const r = await runCli(args);
      expect(r.code, r.stderr).toBe(2);
      expect(expectOneLineError(r)).toMatch(line);
      expect(r.stdout).toBe('');
      const j = await runCli([...args, '--json']);
      expect(j.code, j.stderr).toBe(2);
      const lines = j.stderr.trim().split('\n');
      expect(lines).toHaveLength(2);
      expect(lines[0]).toMatch(line);
      expect(JSON.parse(lines[1]!)).toEqual({
        message_type: 'exit_error',
        code: 'USAGE',
        exit_code: 2,
        message: lines[0]!.slice('vmvault: '.length),
      });
    });

  it('help and version output stay as they are (stdout, exit 0)', async () => {
    const help = await runCli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Usage: vmvault \[options\] \[command\]/);
    expect(help.stderr).toBe('');
    const sub = await runCli(['restore', '--help']);
    expect(sub.code).toBe(0);
    expect(sub.stdout).toMatch(/^Usage: vmvault restore \[options\] <snapshot>/);
    const version = await runCli(['--version']);
    expect(version.code).toBe(0);
    expect(version.stdout).toMatch(/^\d+\.\d+\.\d+/);
    expect(version.stderr).toBe('');
  });
});

describe.runIf(requireTools(['qemu-img']))(
  'backup-image tags and restore --config of an image snapshot',
  () => {
    let dir: string;
    let cleanup: () => Promise<void>;
    let repo: string;
    let img: string;

    beforeAll(async () => {
      ({ dir, cleanup } = await makeTmpDir());
      repo = join(dir, 'repo');
      img = join(dir, 'a.raw');
      const fh = await open(img, 'w');
      await fh.truncate(4 * MiB);
      await fh.write(seededBytes(MiB, 5), 0, MiB, MiB);
      await fh.close();
      const r = await runCli(['init', repo]);
      expect(r.code, r.stderr).toBe(0);
    });
    afterAll(async () => cleanup());

    it('--tag is repeatable (and takes comma lists) and leaves the file arguments alone', async () => {
      const r = await runCli([
        'backup-image',
        '-r',
        repo,
        '--vm',
        'web',
        '--tag',
        'first',
        '--tag',
        'second,third',
        img,
        `${img}:sdb`,
        '--json',
      ]);
      expect(r.code, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout) as { snapshot: string; disks: Array<{ target: string }> };
      expect(summary.disks.map((d) => d.target)).toEqual(['vda', 'sdb']);
      const show = await runCli(['show', '-r', repo, summary.snapshot, '--json']);
      expect(show.code, show.stderr).toBe(0);
      expect((JSON.parse(show.stdout) as { tags: string[] }).tags).toEqual(['first', 'second', 'third']);
    });

    it('restore --config (or --define) of an image snapshot fails before writing anything, with the fix', async () => {
      const out = join(dir, 'out');
      for (const flag of ['--config', '--define']) {
        const r = await runCli(['restore', '-r', repo, 'web@latest', '-o', out, flag]);
        expect(r.code, r.stderr).toBe(2);
        expect(expectOneLineError(r)).toMatch(
          /^vmvault: snapshot [0-9a-f]{8} holds no domain XML \(it was made by backup-image\); drop --config and --define to restore its disks$/,
        );
        await expect(readdir(out)).rejects.toMatchObject({ code: 'ENOENT' });
      }
      await mkdir(out);
      const r = await runCli(['restore', '-r', repo, 'web@latest', '-o', out, '--config', '--disk', 'vda']);
      expect(r.code).toBe(2);
      expect(await readdir(out)).toEqual([]);
      const ok = await runCli(['restore', '-r', repo, 'web@latest', '-o', out]);
      expect(ok.code, ok.stderr).toBe(0);
      expect((await readdir(out)).sort()).toEqual(['sdb.qcow2', 'vda.qcow2']);
    });
  },
);
