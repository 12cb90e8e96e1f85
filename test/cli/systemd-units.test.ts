import { execFile } from 'node:child_process';
import { chmod, copyFile, cp, mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN } from '../helpers/cli.js';
import { makeTmpDir } from '../helpers/tmp.js';
import { requireTools } from '../helpers/tools.js';

/**
 * contrib/systemd's units as shipped: `systemd-analyze verify` (no running systemd needed) on
 * them, in a root directory of their own (`--root`) that holds the system's unit library, the
 * units under /etc/systemd/system, the example environment file at /etc/vmvault/vmvault.env, a
 * shell at /bin/sh and vmvault's launcher at /usr/local/bin/vmvault, where the units name it:
 * verify then checks every setting, every specifier and that each command is an executable
 * there. The backup unit's shell line is then run as systemd would run it (after its `$$` and
 * `%i` are resolved), with a stand-in at vmvault's path that prints its arguments.
 */

const exec = promisify(execFile);
const UNITS = fileURLToPath(new URL('../../contrib/systemd/', import.meta.url));
const run = requireTools(['systemd-analyze']);

describe.runIf(run)('contrib/systemd units', () => {
  let dir: string;
  let cleanup: () => Promise<void>;
  let root: string;
  let files: string[];

  beforeAll(async () => {
    ({ dir, cleanup } = await makeTmpDir('vmvault-systemd-'));
    root = join(dir, 'root');
    files = (await readdir(UNITS)).filter((f) => /\.(service|timer)$/.test(f)).sort();
    await mkdir(join(root, 'usr/lib/systemd'), { recursive: true });
    // The targets the units order against (sysinit, timers, network-online, ...).
    await cp('/usr/lib/systemd/system', join(root, 'usr/lib/systemd/system'), {
      recursive: true,
      verbatimSymlinks: true,
    });
    await mkdir(join(root, 'etc/systemd/system'), { recursive: true });
    for (const f of files) await copyFile(join(UNITS, f), join(root, 'etc/systemd/system', f));
    await mkdir(join(root, 'etc/vmvault'), { recursive: true });
    await copyFile(join(UNITS, 'vmvault.env'), join(root, 'etc/vmvault/vmvault.env'));
    await mkdir(join(root, 'bin'), { recursive: true });
    await copyFile('/bin/sh', join(root, 'bin/sh'));
    await chmod(join(root, 'bin/sh'), 0o755);
    await mkdir(join(root, 'usr/local/bin'), { recursive: true });
    await copyFile(BIN, join(root, 'usr/local/bin/vmvault'));
    await chmod(join(root, 'usr/local/bin/vmvault'), 0o755);
  });
  afterAll(async () => cleanup?.());

  const verify = (units: string[]): Promise<{ stdout: string; stderr: string }> =>
    exec('systemd-analyze', ['verify', `--root=${root}`, '--man=no', '--generators=no', ...units]);

  it('ships the backup template, prune and check with their timers', () => {
    expect(files).toEqual([
      'vmvault-backup@.service',
      'vmvault-backup@.timer',
      'vmvault-check.service',
      'vmvault-check.timer',
      'vmvault-prune.service',
      'vmvault-prune.timer',
    ]);
  });

  it('systemd-analyze verify passes, without a word, on every unit and on instances of the template', async () => {
    const r = await verify([
      'vmvault-backup@web-1.service',
      'vmvault-backup@all.service',
      'vmvault-backup@web-1.timer',
      'vmvault-backup@all.timer',
      'vmvault-prune.service',
      'vmvault-prune.timer',
      'vmvault-check.service',
      'vmvault-check.timer',
    ]);
    expect(r.stderr + r.stdout).toBe('');
  });

  it('verify would notice: an unknown setting, and vmvault missing where the units name it', async () => {
    const unit = join(root, 'etc/systemd/system/vmvault-check.service');
    const good = await readFile(unit, 'utf8');
    try {
      await writeFile(unit, good.replace('[Service]', '[Service]\nNoSuchSetting=1'));
      const bad = await verify(['vmvault-check.service']).catch((e: { stderr: string }) => e);
      expect(bad.stderr).toMatch(/Unknown key 'NoSuchSetting'/);
      await writeFile(unit, good.replaceAll('/usr/local/bin/vmvault', '/usr/local/bin/vmvault-missing'));
      const missing = await verify(['vmvault-check.service']).catch((e: { stderr: string }) => e);
      expect(missing.stderr).toMatch(/\/usr\/local\/bin\/vmvault-missing is not executable/);
    } finally {
      await writeFile(unit, good);
    }
  });

  it('the timers spread a fleet: a randomized delay fixed per host, and persistent', async () => {
    for (const f of files.filter((n) => n.endsWith('.timer'))) {
      expect(files, `${f} starts the service of its name`).toContain(f.replace(/\.timer$/, '.service'));
      const text = await readFile(join(UNITS, f), 'utf8');
      expect(text, f).toMatch(/^RandomizedDelaySec=\S+$/m);
      expect(text, f).toMatch(/^FixedRandomDelay=true$/m);
      expect(text, f).toMatch(/^Persistent=true$/m);
      expect(text, f).toMatch(/^WantedBy=timers\.target$/m);
    }
    for (const f of files.filter((n) => n.endsWith('.service'))) {
      const text = await readFile(join(UNITS, f), 'utf8');
      expect(text, f).toMatch(/^EnvironmentFile=\/etc\/vmvault\/vmvault\.env$/m);
      expect(text, f).not.toMatch(/^PrivateTmp=yes/m); // the backup job's socket is in /var/tmp
    }
  });

  it("the backup unit's command: `all` is --all, any other instance -d NAME, the options split at spaces", async () => {
    const unit = await readFile(join(UNITS, 'vmvault-backup@.service'), 'utf8');
    const m = /^ExecStart=\/bin\/sh -c '([^']*)' vmvault-backup %i$/m.exec(unit);
    expect(m, 'ExecStart=/bin/sh -c SCRIPT vmvault-backup %i').not.toBeNull();
    // systemd passes `$$` as `$`; the stand-in at vmvault's path prints its arguments.
    const stub = join(dir, 'vmvault-args');
    await writeFile(stub, '#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n');
    await chmod(stub, 0o755);
    const script = m![1]!.replaceAll('$$', '$').replace('/usr/local/bin/vmvault', stub);
    const argsOf = async (instance: string, env: NodeJS.ProcessEnv): Promise<string[]> => {
      const r = await exec('/bin/sh', ['-c', script, 'vmvault-backup', instance], {
        env: { PATH: process.env.PATH, ...env },
      });
      return r.stdout.split('\n').filter(Boolean);
    };
    const reports = '--metrics-file /var/lib/prometheus/node-exporter/vmvault.prom';
    expect(
      await argsOf('all', {
        VMVAULT_BACKUP_OPTIONS: '--level auto  --tag nightly',
        VMVAULT_REPORT_OPTIONS: reports,
      }),
    ).toEqual([
      'backup',
      '--all',
      '--level',
      'auto',
      '--tag',
      'nightly',
      '--metrics-file',
      '/var/lib/prometheus/node-exporter/vmvault.prom',
    ]);
    expect(await argsOf('web-1', { VMVAULT_BACKUP_OPTIONS: '--tag *' })).toEqual([
      'backup',
      '-d',
      'web-1',
      '--tag',
      '*',
    ]);
    expect(await argsOf('web-1', {})).toEqual(['backup', '-d', 'web-1']);
  });

  it('the example environment file sets what the units use, as systemd reads it (KEY=VALUE)', async () => {
    const text = await readFile(join(UNITS, 'vmvault.env'), 'utf8');
    const set = text
      .split('\n')
      .filter((l) => l.trim() !== '' && !l.startsWith('#'))
      .map((l) => {
        expect(l).toMatch(/^[A-Z][A-Z0-9_]*=[^"'$`]*$/);
        return l.slice(0, l.indexOf('='));
      });
    expect(set).toEqual(
      expect.arrayContaining([
        'VMVAULT_REPO',
        'VMVAULT_PASSWORD_FILE',
        'AWS_ACCESS_KEY_ID',
        'AWS_SECRET_ACCESS_KEY',
        'VMVAULT_BACKUP_OPTIONS',
        'VMVAULT_FORGET_OPTIONS',
        'VMVAULT_REPORT_OPTIONS',
      ]),
    );
    expect(text).not.toMatch(/^VMVAULT_PASSWORD=/m); // a password file, not the password
  });
});
