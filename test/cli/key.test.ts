import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { expectOneLineError, runCli } from '../helpers/cli.js';
import { makeTmpDir } from '../helpers/tmp.js';

const tmp = await makeTmpDir('vmvault-key-');
afterAll(() => tmp.cleanup());

/** VMVAULT_TEST_KDF_N: test-only small scrypt parameters, so each slot costs milliseconds. */
const env = (password?: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv => ({
  VMVAULT_TEST_KDF_N: '16384',
  VMVAULT_EXPERIMENTAL_ENCRYPTION: '1',
  VMVAULT_PASSWORD: password ?? '',
  VMVAULT_PASSWORD_FILE: '',
  VMVAULT_PASSWORD_COMMAND: '',
  ...extra,
});
let n = 0;
async function newRepo(password = 'first'): Promise<string> {
  const repo = join(tmp.dir, `r${n++}`);
  const r = await runCli(['init', repo, '--encryption', 'aes-256-gcm', '--json'], { env: env(password) });
  expect(r.code, r.stderr).toBe(0);
  expect(JSON.parse(r.stdout)).toMatchObject({
    encryption: 'aes-256-gcm',
    keySlot: expect.stringMatching(/^[0-9a-f]{32}$/),
  });
  return repo;
}
const listSlots = async (
  repo: string,
  password: string,
): Promise<Array<{ id: string; current: boolean; label: string }>> => {
  const r = await runCli(['key', 'list', '-r', repo, '--json'], { env: env(password) });
  expect(r.code, r.stderr).toBe(0);
  return JSON.parse(r.stdout) as Array<{ id: string; current: boolean; label: string }>;
};

describe('vmvault init --encryption and key', () => {
  it('init --encryption aes-256-gcm needs no opt-in: packs, index and manifests are encrypted', async () => {
    const repo = join(tmp.dir, 'no-opt-in');
    const r = await runCli(['init', repo, '--encryption', 'aes-256-gcm'], {
      env: env('pw', { VMVAULT_EXPERIMENTAL_ENCRYPTION: '' }),
    });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/encryption aes-256-gcm/);
  });
  it('init writes an encrypted config (keyed ids, keyId, mac) and one key slot', async () => {
    const repo = await newRepo();
    const config = JSON.parse(await readFile(join(repo, 'config'), 'utf8')) as Record<string, unknown>;
    expect(config).toMatchObject({ encryption: 'aes-256-gcm', chunkId: 'blake3-256-keyed' });
    expect(config.keyId).toMatch(/^[0-9a-f]{32}$/);
    expect(config.mac).toMatch(/^[0-9a-f]{64}$/);
    const slots = await listSlots(repo, 'first');
    expect(slots).toHaveLength(1);
    expect(slots[0]!.current).toBe(true);
    expect(slots[0]!.label).toMatch(/@/);
    expect(await readdir(join(repo, 'keys'))).toEqual([slots[0]!.id]);
  });

  it('a wrong password is exit 12 with one line; no password on a non-TTY names every source', async () => {
    const repo = await newRepo();
    const wrong = await runCli(['snapshots', '-r', repo], { env: env('nope') });
    expect(wrong.code).toBe(12);
    expect(expectOneLineError(wrong)).toMatch(
      /^vmvault: wrong password for repository .* \(key slots: 1\); /,
    );
    const none = await runCli(['snapshots', '-r', repo], { env: env() });
    expect(none.code).toBe(12);
    const line = expectOneLineError(none);
    for (const s of [
      'VMVAULT_PASSWORD',
      'VMVAULT_PASSWORD_FILE',
      '--password-file',
      'VMVAULT_PASSWORD_COMMAND',
    ])
      expect(line).toContain(s);
    const init = await runCli(['init', join(tmp.dir, 'nopw'), '--encryption', 'aes-256-gcm'], { env: env() });
    expect(init.code).toBe(12);
  });

  it('password file (global --password-file, VMVAULT_PASSWORD_FILE) and command sources', async () => {
    const repo = await newRepo('from file');
    const file = join(tmp.dir, 'pw.txt');
    await writeFile(file, 'from file\nsecond line ignored\n');
    const a = await runCli(['--password-file', file, 'key', 'list', '-r', repo], { env: env() });
    expect(a.code, a.stderr).toBe(0);
    const b = await runCli(['key', 'list', '-r', repo], {
      env: env(undefined, { VMVAULT_PASSWORD_FILE: file }),
    });
    expect(b.code, b.stderr).toBe(0);
    const c = await runCli(['key', 'list', '-r', repo], {
      env: env(undefined, { VMVAULT_PASSWORD_COMMAND: "printf 'from file\\n'" }),
    });
    expect(c.code, c.stderr).toBe(0);
    const d = await runCli(['key', 'list', '-r', repo], {
      env: env(undefined, { VMVAULT_PASSWORD_COMMAND: 'exit 3' }),
    });
    expect(d.code).toBe(12);
    expect(expectOneLineError(d)).toMatch(/VMVAULT_PASSWORD_COMMAND failed/);
    const e = await runCli(['--password-file', join(tmp.dir, 'missing'), 'key', 'list', '-r', repo], {
      env: env(),
    });
    expect(e.code).toBe(12);
    expect(expectOneLineError(e)).toMatch(/cannot read the password file/);
  });

  it('key add, remove and passwd round trip; the last slot and the slot in use are protected', async () => {
    const repo = await newRepo('one');
    const add = await runCli(['key', 'add', '-r', repo, '--json'], {
      env: env('one', { VMVAULT_NEW_PASSWORD: 'two' }),
    });
    expect(add.code, add.stderr).toBe(0);
    const added = (JSON.parse(add.stdout) as { id: string }).id;
    const slots = await listSlots(repo, 'two');
    expect(slots).toHaveLength(2);
    expect(slots.find((s) => s.current)!.id).toBe(added);
    const first = slots.find((s) => !s.current)!.id;
    // In use without --force: refused.
    const inUse = await runCli(['key', 'remove', first, '-r', repo], { env: env('one') });
    expect(inUse.code).toBe(2);
    expect(expectOneLineError(inUse)).toMatch(/is the one this password opened; pass --force/);
    // Removed with the other password.
    const rm = await runCli(['key', 'remove', first, '-r', repo, '--json'], { env: env('two') });
    expect(rm.code, rm.stderr).toBe(0);
    expect((await runCli(['key', 'list', '-r', repo], { env: env('one') })).code).toBe(12);
    // The last one: refused even with --force.
    const last = await runCli(['key', 'remove', added, '-r', repo, '--force'], { env: env('two') });
    expect(last.code).toBe(2);
    expect(expectOneLineError(last)).toMatch(/refusing to remove the last key slot/);
    const unknown = await runCli(['key', 'remove', 'f'.repeat(32), '-r', repo], { env: env('two') });
    expect(unknown.code).toBe(1);
    // passwd: a new slot for the new password, the old one gone.
    const pw = await runCli(['key', 'passwd', '-r', repo, '--json'], {
      env: env('two', { VMVAULT_NEW_PASSWORD: 'three' }),
    });
    expect(pw.code, pw.stderr).toBe(0);
    expect(JSON.parse(pw.stdout)).toMatchObject({ removed: added });
    expect((await listSlots(repo, 'three')).map((s) => s.current)).toEqual([true]);
    expect((await runCli(['key', 'list', '-r', repo], { env: env('two') })).code).toBe(12);
  });

  it('an edited config (mac) and key slots in an unencrypted config are damage (exit 20)', async () => {
    const repo = await newRepo('x');
    const path = join(repo, 'config');
    const config = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
    await writeFile(path, JSON.stringify({ ...config, compression: { codec: 'zstd', level: 9 } }));
    const edited = await runCli(['snapshots', '-r', repo], { env: env('x') });
    expect(edited.code).toBe(20);
    expect(expectOneLineError(edited)).toMatch(/mac does not match/);
    const { chunkId: _c, keyId: _k, mac: _m, ...plain } = config;
    void [_c, _k, _m];
    await writeFile(path, JSON.stringify({ ...plain, chunkId: 'blake3-256', encryption: 'none' }));
    const downgraded = await runCli(['snapshots', '-r', repo], { env: env('x') });
    expect(downgraded.code).toBe(20);
    expect(expectOneLineError(downgraded)).toMatch(/not encrypted, but it has key slots/);
  });

  it('VMVAULT_KEY_CACHE keeps the unlocked slot for the next command; key passwd makes it stale', async () => {
    const repo = await newRepo('cached');
    const cache = join(tmp.dir, 'kek-cache');
    const withCache = (pw: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv =>
      env(pw, { VMVAULT_KEY_CACHE: cache, ...extra });
    const a = await runCli(['snapshots', '-r', repo], { env: withCache('cached') });
    expect(a.code, a.stderr).toBe(0);
    const files = await readdir(cache);
    expect(files).toHaveLength(1);
    expect(files[0]).toMatch(/^[0-9a-f]{64}\.json$/);
    const entry = await readFile(join(cache, files[0]!), 'utf8');
    expect(entry).not.toContain('cached'); // the password itself is not kept
    expect((await runCli(['snapshots', '-r', repo], { env: withCache('cached') })).code).toBe(0);
    const wrong = await runCli(['snapshots', '-r', repo], { env: withCache('nope') });
    expect(wrong.code).toBe(12);
    const p = await runCli(['key', 'passwd', '-r', repo], {
      env: withCache('cached', { VMVAULT_NEW_PASSWORD: 'renewed' }),
    });
    expect(p.code, p.stderr).toBe(0);
    expect((await runCli(['snapshots', '-r', repo], { env: withCache('cached') })).code).toBe(12);
    expect((await runCli(['snapshots', '-r', repo], { env: withCache('renewed') })).code).toBe(0);
    expect(await readFile(join(cache, files[0]!), 'utf8')).not.toBe(entry);
  });

  it('a damaged key slot is skipped with a warning', async () => {
    const repo = await newRepo('x');
    await writeFile(join(repo, 'keys', '0'.repeat(32)), '{"format":"vmvault-key"');
    const r = await runCli(['key', 'list', '-r', repo], { env: env('x') });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/^warning: key slot keys\/0{32} is damaged \(skipped\): not valid JSON/m);
  });

  it('an unencrypted repository needs no password and has no key slots', async () => {
    const repo = join(tmp.dir, 'plain');
    expect((await runCli(['init', repo], { env: env() })).code).toBe(0);
    expect((await runCli(['snapshots', '-r', repo], { env: env() })).code).toBe(0);
    const k = await runCli(['key', 'list', '-r', repo], { env: env() });
    expect(k.code).toBe(2);
    expect(expectOneLineError(k)).toMatch(/is not encrypted/);
  });
});
