import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Blake3Hasher } from '@napi-rs/blake-hash';
import { describe, expect, it } from 'vitest';
import {
  canonicalJson,
  configMac,
  createKeySlot,
  dirKekCache,
  generateMasterKey,
  keyIdOf,
  listKeySlots,
  MemoryBackend,
  NoKeySlotError,
  removeKeySlot,
  splitMasterKey,
  unlockMasterKey,
  WrongPasswordError,
  type DamagedKeySlot,
  type KekCache,
  type KeySlotJson,
} from '../../src/repo/index.js';

/** Test-only scrypt parameters (the smallest readers accept): milliseconds instead of a second. */
const kdf = { N: 2 ** 14, r: 8, p: 1 };
const repoId = '1'.repeat(64);

async function setup(
  passwords: string[],
): Promise<{ backend: MemoryBackend; master: Buffer; names: string[] }> {
  const backend = new MemoryBackend();
  const master = generateMasterKey();
  const names: string[] = [];
  for (const [i, pw] of passwords.entries())
    names.push((await createKeySlot(backend, repoId, master, pw, { label: `user${i}@host`, kdf })).name);
  return { backend, master, names };
}

async function slotJson(backend: MemoryBackend, name: string): Promise<KeySlotJson> {
  return JSON.parse((await backend.get(name)).toString('utf8')) as KeySlotJson;
}

describe('key slots', () => {
  it('a slot wraps the master key under the password; the JSON is design §6.3', async () => {
    const { backend, master, names } = await setup(['pw one']);
    expect(names[0]).toMatch(/^keys\/[0-9a-f]{32}$/);
    const json = await slotJson(backend, names[0]!);
    expect(Object.keys(json).sort()).toEqual(
      ['createdAt', 'format', 'kdf', 'key', 'label', 'nonce', 'repository', 'version'].sort(),
    );
    expect(json).toMatchObject({
      format: 'vmvault-key',
      version: 2,
      repository: repoId,
      label: 'user0@host',
    });
    expect(json.kdf).toMatchObject({ name: 'scrypt', N: 16384, r: 8, p: 1 });
    expect(Buffer.from(json.kdf.salt, 'base64')).toHaveLength(32);
    expect(Buffer.from(json.nonce, 'base64')).toHaveLength(12);
    expect(Buffer.from(json.key, 'base64')).toHaveLength(80);
    expect((await backend.get(names[0]!)).includes(master.subarray(0, 8))).toBe(false);
    const r = await unlockMasterKey(backend, repoId, 'pw one');
    expect(r.master.equals(master)).toBe(true);
    expect(r.slotName).toBe(names[0]);
    const [slot] = await listKeySlots(backend);
    expect(slot).toMatchObject({ name: names[0], id: names[0]!.slice(5), label: 'user0@host', kdf });
  });

  it('a wrong password is exit 12 naming the repository and the number of slots', async () => {
    const { backend } = await setup(['a', 'b']);
    const err = await unlockMasterKey(backend, repoId, 'c').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WrongPasswordError);
    expect((err as WrongPasswordError).exitCode).toBe(12);
    expect((err as WrongPasswordError).oneLine()).toMatch(
      /^wrong password for repository memory: \(key slots: 2\); give the password of one of its key slots \(VMVAULT_PASSWORD, VMVAULT_PASSWORD_FILE, --password-file, VMVAULT_PASSWORD_COMMAND or the prompt\)$/,
    );
  });

  it('each slot opens with its own password; the hinted slot is tried first; removal works', async () => {
    const { backend, master, names } = await setup(['a', 'b', 'a']);
    expect((await unlockMasterKey(backend, repoId, 'b')).slotName).toBe(names[1]);
    const sorted = [names[0]!, names[2]!].sort();
    expect((await unlockMasterKey(backend, repoId, 'a')).slotName).toBe(sorted[0]);
    expect((await unlockMasterKey(backend, repoId, 'a', { hint: sorted[1]!.slice(5) })).slotName).toBe(
      sorted[1],
    );
    await removeKeySlot(backend, names[1]!);
    await expect(unlockMasterKey(backend, repoId, 'b')).rejects.toThrow(/key slots: 2/);
    expect((await unlockMasterKey(backend, repoId, 'a')).master.equals(master)).toBe(true);
    expect((await listKeySlots(backend)).map((s) => s.name)).toEqual(sorted);
  });

  it('a slot is bound to its repository and its name', async () => {
    const { backend } = await setup(['a']);
    const [slot] = await listKeySlots(backend);
    // Copied under another name: the AAD (repository id ‖ name) no longer matches.
    const moved = new MemoryBackend();
    await moved.put(`keys/${'f'.repeat(32)}`, await backend.get(slot!.name));
    await expect(unlockMasterKey(moved, repoId, 'a')).rejects.toBeInstanceOf(WrongPasswordError);
    // Another repository's slot: skipped as damaged (it can never open this one).
    const damaged: DamagedKeySlot[] = [];
    await expect(
      unlockMasterKey(backend, '2'.repeat(64), 'a', { onDamaged: (d) => damaged.push(d) }),
    ).rejects.toBeInstanceOf(NoKeySlotError);
    expect(damaged[0]?.reason).toMatch(/belongs to another repository/);
  });

  it('hostile slots are damaged: skipped with a warning, never a crash; the sound slot still opens', async () => {
    const { backend, master, names } = await setup(['good']);
    const good = await slotJson(backend, names[0]!);
    const hostile: Array<[string, unknown]> = [
      ['not JSON', '{"format":'],
      ['array', []],
      ['null', null],
      ['extra field', { ...good, extra: 1 }],
      ['format', { ...good, format: 'x' }],
      ['version', { ...good, version: 1 }],
      ['repository', { ...good, repository: 'zz' }],
      ['createdAt', { ...good, createdAt: 'yesterday' }],
      ['label', { ...good, label: 'x'.repeat(201) }],
      ['label type', { ...good, label: 5 }],
      ['kdf', { ...good, kdf: 'scrypt' }],
      ['kdf name', { ...good, kdf: { ...good.kdf, name: 'argon2id' } }],
      ['kdf extra', { ...good, kdf: { ...good.kdf, maxmem: 1 } }],
      ['N huge', { ...good, kdf: { ...good.kdf, N: 2 ** 21 } }],
      ['N small', { ...good, kdf: { ...good.kdf, N: 2 ** 13 } }],
      ['N not 2^k', { ...good, kdf: { ...good.kdf, N: 20000 } }],
      ['N string', { ...good, kdf: { ...good.kdf, N: '16384' } }],
      ['r 0', { ...good, kdf: { ...good.kdf, r: 0 } }],
      ['r 17', { ...good, kdf: { ...good.kdf, r: 17 } }],
      ['p 17', { ...good, kdf: { ...good.kdf, p: 17 } }],
      ['p 1.5', { ...good, kdf: { ...good.kdf, p: 1.5 } }],
      ['memory', { ...good, kdf: { ...good.kdf, N: 2 ** 17, r: 16 } }],
      ['salt short', { ...good, kdf: { ...good.kdf, salt: Buffer.alloc(31).toString('base64') } }],
      ['salt not base64', { ...good, kdf: { ...good.kdf, salt: '!'.repeat(44) } }],
      ['nonce', { ...good, nonce: Buffer.alloc(16).toString('base64') }],
      ['key', { ...good, key: Buffer.alloc(64).toString('base64') }],
      ['key type', { ...good, key: 7 }],
    ];
    for (const [i, [, value]] of hostile.entries())
      await backend.put(
        `keys/${i.toString(16).padStart(32, '0')}`,
        Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)),
      );
    await backend.put(`keys/${'e'.repeat(32)}`, Buffer.alloc(5000, 0x20));
    await backend.put('keys/not-a-slot', Buffer.from('{}'));
    const damaged: DamagedKeySlot[] = [];
    const slots = await listKeySlots(backend, { repoId, onDamaged: (d) => damaged.push(d) });
    expect(slots.map((s) => s.name)).toEqual(names);
    expect(damaged).toHaveLength(hostile.length + 2);
    for (const d of damaged) expect(d.reason).not.toBe('');
    expect(damaged.find((d) => d.name === `keys/${'e'.repeat(32)}`)?.reason).toMatch(
      /more than any key slot/,
    );
    const r = await unlockMasterKey(backend, repoId, 'good', { onDamaged: () => undefined });
    expect(r.master.equals(master)).toBe(true);
    // Only damaged ones left: exit 20, not a wrong password.
    await removeKeySlot(backend, names[0]!);
    const err = await unlockMasterKey(backend, repoId, 'good').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NoKeySlotError);
    expect((err as NoKeySlotError).exitCode).toBe(20);
  });

  it('refuses an empty password and parameters readers would refuse', async () => {
    const backend = new MemoryBackend();
    const master = generateMasterKey();
    await expect(createKeySlot(backend, repoId, master, '', { label: 'x', kdf })).rejects.toThrow(/empty/);
    await expect(
      createKeySlot(backend, repoId, master, 'a', { label: 'x', kdf: { N: 2 ** 13, r: 8, p: 1 } }),
    ).rejects.toThrow(RangeError);
    await expect(
      createKeySlot(backend, repoId, master.subarray(1), 'a', { label: 'x', kdf }),
    ).rejects.toThrow(RangeError);
  });

  it('the default parameters (N=2^17 r=8 p=3) take about a second and stay under 256 MiB RSS', async () => {
    const { stdout } = await promisify(execFile)(
      'node',
      ['--import', 'tsx', new URL('./fixtures/keyslot-default.ts', import.meta.url).pathname],
      { timeout: 60_000 },
    );
    const r = JSON.parse(stdout) as { createMs: number; unlockMs: number; ok: boolean; maxRssBytes: number };
    expect(r.ok).toBe(true);
    // ≈ 1 s on the project machine (design §6.3: 0.98–1.53 s); bounds wide for a loaded machine.
    expect(r.unlockMs).toBeGreaterThan(200);
    expect(r.unlockMs).toBeLessThan(15_000);
    expect(r.maxRssBytes).toBeLessThan(256 * 1024 * 1024);
    console.log(
      `default scrypt: create ${r.createMs.toFixed(0)} ms, unlock ${r.unlockMs.toFixed(0)} ms, peak RSS ${(r.maxRssBytes / 2 ** 20).toFixed(0)} MiB`,
    );
  });
});

describe('key id and config MAC', () => {
  it('keyIdOf is BLAKE3-128 keyed with idKey of "vmvault-v2 key id"', () => {
    const { idKey, encKey } = splitMasterKey(Buffer.concat([Buffer.alloc(32, 1), Buffer.alloc(32, 2)]));
    expect(encKey.equals(Buffer.alloc(32, 1))).toBe(true);
    const expected = Blake3Hasher.newKeyed(Buffer.alloc(32, 2)).update('vmvault-v2 key id').digestBuffer();
    expect(keyIdOf(idKey)).toBe(expected.subarray(0, 16).toString('hex'));
    expect(keyIdOf(idKey)).toMatch(/^[0-9a-f]{32}$/);
    expect(keyIdOf(Buffer.alloc(32, 3))).not.toBe(keyIdOf(idKey));
  });

  it('configMac covers the canonical JSON (keys sorted) of every field but mac', () => {
    const encKey = Buffer.alloc(32, 7);
    const config = {
      version: 2,
      format: 'vmvault-repository',
      compression: { level: 1, codec: 'zstd' },
      encryption: 'aes-256-gcm',
    };
    expect(canonicalJson(config)).toBe(
      '{"compression":{"codec":"zstd","level":1},"encryption":"aes-256-gcm","format":"vmvault-repository","version":2}',
    );
    const macKey = Blake3Hasher.newKeyed(encKey).update('vmvault-v2 config').digestBuffer();
    const expected = Blake3Hasher.newKeyed(macKey)
      .update(canonicalJson(config))
      .digestBuffer()
      .toString('hex');
    const mac = configMac(encKey, config);
    expect(mac).toBe(expected);
    expect(configMac(encKey, { ...config, mac })).toBe(mac);
    // Key order does not matter; any change of a value does.
    expect(configMac(encKey, Object.fromEntries(Object.entries(config).reverse()))).toBe(mac);
    expect(configMac(encKey, { ...config, encryption: 'none' })).not.toBe(mac);
    expect(configMac(encKey, { ...config, compression: { codec: 'zstd', level: 2 } })).not.toBe(mac);
    expect(configMac(Buffer.alloc(32, 8), config)).not.toBe(mac);
  });
});

describe('the key cache (VMVAULT_KEY_CACHE)', () => {
  it('a password unlocks from the cache without scrypt; a wrong one still fails; a removed slot or a bad entry is a miss', async () => {
    const { mkdtemp, readFile, writeFile, stat, chmod, rm } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const root = await mkdtemp(join(tmpdir(), 'vmvault-kek-'));
    try {
      const dir = join(root, 'cache');
      const { backend, master, names } = await setup(['a', 'b']);
      const inner = dirKekCache(dir);
      let hits = 0;
      let puts = 0;
      const cache: KekCache = {
        get: (id, slot, pw) => {
          const k = inner.get(id, slot, pw);
          if (k) hits++;
          return k;
        },
        put: (id, slot, pw, kek) => {
          puts++;
          inner.put(id, slot, pw, kek);
        },
      };
      const first = await unlockMasterKey(backend, repoId, 'b', { cache });
      expect(first.master.equals(master)).toBe(true);
      expect(puts).toBe(1);
      expect((await stat(dir)).mode & 0o777).toBe(0o700);
      const file = join(dir, `${repoId}.json`);
      expect((await stat(file)).mode & 0o777).toBe(0o600);
      // Again: from the cache (no put: no scrypt ran), the same slot.
      const again = await unlockMasterKey(backend, repoId, 'b', { cache });
      expect(again).toMatchObject({ slotName: first.slotName });
      expect(again.master.equals(master)).toBe(true);
      expect(hits).toBe(1);
      expect(puts).toBe(1);
      // A wrong password does not match the entry's check: the slots are tried and refuse it.
      await expect(unlockMasterKey(backend, repoId, 'c', { cache })).rejects.toThrow(WrongPasswordError);
      expect(hits).toBe(1);
      // Another password opens its own slot and replaces the entry.
      expect((await unlockMasterKey(backend, repoId, 'a', { cache })).slotName).toBe(names[0]);
      expect(puts).toBe(2);
      // A damaged entry (another kek, a fixed check) is a miss, and the password still works.
      const e = JSON.parse(await readFile(file, 'utf8')) as { kek: string };
      await writeFile(file, JSON.stringify({ ...e, kek: 'f'.repeat(64) }));
      expect((await unlockMasterKey(backend, repoId, 'a', { cache })).master.equals(master)).toBe(true);
      expect(hits).toBe(1);
      // A removed slot: its entry opens nothing.
      await removeKeySlot(backend, names[0]!);
      await expect(unlockMasterKey(backend, repoId, 'a', { cache })).rejects.toThrow(WrongPasswordError);
      // A directory others can read is not used (and said once).
      const warnings: string[] = [];
      await chmod(dir, 0o755);
      const open = dirKekCache(dir, (m) => warnings.push(m));
      await unlockMasterKey(backend, repoId, 'b', { cache: open });
      await unlockMasterKey(backend, repoId, 'b', { cache: open });
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toMatch(/not used.*chmod 700/);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
