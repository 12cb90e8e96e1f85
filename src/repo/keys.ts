import { chmodSync, mkdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  createCipheriv,
  createDecipheriv,
  randomBytes,
  timingSafeEqual,
  scrypt as scryptCb,
  type ScryptOptions,
} from 'node:crypto';
import { ExitCode, printable, UsageError, VmvaultError } from '../util/index.js';
import type { Backend } from './backend/backend.js';
import { ENC_KEY_BYTES, ID_KEY_BYTES, keyedHash } from './codec.js';
import { isNotFound } from './errors.js';

/**
 * Key slots (docs/format-2-design.md §6.3, docs/format.md "Encryption (format 2)"): the master
 * key (64 random bytes = encKey ‖ idKey, never rotated) wrapped by AES-256-GCM under a key derived
 * from a password with scrypt, one JSON object per slot under `keys/<32 hex>`. Everything read
 * from a slot is untrusted: a slot that is not exactly what vmvault writes is "damaged", skipped
 * with a warning, never a crash.
 */

export const MASTER_KEY_BYTES = ENC_KEY_BYTES + ID_KEY_BYTES;
export const KEY_SLOT_PREFIX = 'keys/';
/** The most bytes a slot may have; a larger object under keys/ is damaged and is not read. */
export const MAX_KEY_SLOT_BYTES = 4096;
/** Opening tries at most this many slots (each costs about a second of scrypt). */
export const MAX_KEY_SLOTS_TRIED = 32;
const SLOT_NAME = /^keys\/([0-9a-f]{32})$/;
const SALT_BYTES = 32;
const NONCE_BYTES = 12;
const WRAPPED_BYTES = MASTER_KEY_BYTES + 16;
const MAX_LABEL_CHARS = 200;
const SLOT_AAD = 'vmvault-v2 key slot';

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** scrypt N=2^17 r=8 p=3: about 1 s here, 128 MiB (design §6.3). */
export const DEFAULT_KDF: ScryptParams = { N: 2 ** 17, r: 8, p: 3 };

/** What readers accept (design §6.3): anything else is a damaged slot. */
export const KDF_BOUNDS = {
  minLogN: 14,
  maxLogN: 20,
  maxR: 16,
  maxP: 16,
  maxMemoryBytes: 128 * 1024 * 1024,
} as const;

/** Why params are outside KDF_BOUNDS, or undefined when they are within. */
export function kdfProblem(k: { N: unknown; r: unknown; p: unknown }): string | undefined {
  const { N, r, p } = k;
  const int = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v);
  if (!int(N) || N < 2 ** KDF_BOUNDS.minLogN || N > 2 ** KDF_BOUNDS.maxLogN || (N & (N - 1)) !== 0)
    return `kdf.N is ${shown(N)}, not a power of two from 2^${KDF_BOUNDS.minLogN} to 2^${KDF_BOUNDS.maxLogN}`;
  if (!int(r) || r < 1 || r > KDF_BOUNDS.maxR) return `kdf.r is ${shown(r)}, not 1 to ${KDF_BOUNDS.maxR}`;
  if (!int(p) || p < 1 || p > KDF_BOUNDS.maxP) return `kdf.p is ${shown(p)}, not 1 to ${KDF_BOUNDS.maxP}`;
  if (N * r * 128 > KDF_BOUNDS.maxMemoryBytes)
    return `kdf N·r·128 is ${N * r * 128} bytes, more than ${KDF_BOUNDS.maxMemoryBytes}`;
  return undefined;
}

/** The JSON of a key slot, as written. */
export interface KeySlotJson {
  format: 'vmvault-key';
  version: 2;
  repository: string;
  createdAt: string;
  label: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  nonce: string;
  key: string;
}

/** A key slot as `listKeySlots` returns it (the JSON validated; nothing decrypted). */
export interface KeySlot {
  /** The object key, `keys/<id>`. */
  name: string;
  /** The 32 hex digits of its name: what `key remove ID` takes. */
  id: string;
  createdAt: string;
  label: string;
  kdf: ScryptParams;
  json: KeySlotJson;
}

/** A slot that could not be used, and why (the caller prints a warning). */
export interface DamagedKeySlot {
  name: string;
  reason: string;
}

export type OnDamagedKeySlot = (d: DamagedKeySlot) => void;

/** The password opens none of the repository's key slots (exit 12). */
export class WrongPasswordError extends VmvaultError {
  constructor(location: string, slots: number) {
    super('WRONG_PASSWORD', `wrong password for repository ${location} (key slots: ${slots})`, {
      hint: 'give the password of one of its key slots (VMVAULT_PASSWORD, VMVAULT_PASSWORD_FILE, --password-file, VMVAULT_PASSWORD_COMMAND or the prompt)',
      exitCode: ExitCode.WRONG_KEY,
      details: { slots },
    });
  }
}

/** An encrypted repository without one usable key slot: nothing can open it (exit 20). */
export class NoKeySlotError extends VmvaultError {
  constructor(location: string, damaged: number) {
    super(
      'NO_KEY_SLOT',
      `repository ${location} is encrypted but has no usable key slot (${damaged} damaged)`,
      {
        hint: "put its keys/ objects back from a copy of the repository ('vmvault key add' needs an open repository)",
        exitCode: ExitCode.INTEGRITY,
        details: { damaged },
      },
    );
  }
}

/** `key remove` of a slot that is not there. */
export class KeySlotNotFoundError extends VmvaultError {
  constructor(id: string) {
    super('KEY_SLOT_NOT_FOUND', `no key slot ${printable(id, 40)}`, {
      hint: "list the slots with 'vmvault key list'",
    });
  }
}

/** 64 random bytes: encKey (32) ‖ idKey (32). */
export function generateMasterKey(): Buffer {
  return randomBytes(MASTER_KEY_BYTES);
}

/** The two halves of a master key. */
export function splitMasterKey(master: Buffer): { encKey: Buffer; idKey: Buffer } {
  if (master.length !== MASTER_KEY_BYTES)
    throw new RangeError(`a master key is ${MASTER_KEY_BYTES} bytes, not ${master.length}`);
  return {
    encKey: Buffer.from(master.subarray(0, ENC_KEY_BYTES)),
    idKey: Buffer.from(master.subarray(ENC_KEY_BYTES)),
  };
}

/**
 * The config's `keyId`: BLAKE3-128 keyed with idKey of "vmvault-v2 key id", 32 hex. Equal keyIds
 * mean shared key material, without revealing it.
 */
export function keyIdOf(idKey: Buffer): string {
  if (idKey.length !== ID_KEY_BYTES) throw new RangeError(`an id key is ${ID_KEY_BYTES} bytes`);
  return keyedHash(idKey, Buffer.from('vmvault-v2 key id')).subarray(0, 16).toString('hex');
}

/** JSON with object keys sorted at every level and no whitespace: the bytes `configMac` covers. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (typeof value === 'object' && value !== null) {
    const obj = value as Record<string, unknown>;
    const parts = Object.keys(obj)
      .filter((k) => obj[k] !== undefined)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`);
    return `{${parts.join(',')}}`;
  }
  const s = JSON.stringify(value);
  if (s === undefined) throw new RangeError(`cannot encode ${typeof value} as JSON`);
  return s;
}

/**
 * The config's `mac`: keyed BLAKE3 (key = keyed BLAKE3(encKey, "vmvault-v2 config")) of the
 * config's canonical JSON without `mac`, 64 hex. Checked after unlocking: an edit of any field
 * (`encryption` set to none, say) is caught.
 */
export function configMac(encKey: Buffer, config: Record<string, unknown>): string {
  if (encKey.length !== ENC_KEY_BYTES) throw new RangeError(`an encryption key is ${ENC_KEY_BYTES} bytes`);
  const { mac: _mac, ...rest } = config;
  void _mac;
  const macKey = keyedHash(encKey, Buffer.from('vmvault-v2 config'));
  return keyedHash(macKey, Buffer.from(canonicalJson(rest))).toString('hex');
}

function scrypt(password: string, salt: Buffer, k: ScryptParams): Promise<Buffer> {
  // OpenSSL needs 128·r·(N + p + 2) bytes; a little more so the check never refuses valid params.
  const opts: ScryptOptions = { N: k.N, r: k.r, p: k.p, maxmem: 128 * k.r * (k.N + k.p + 2) + (1 << 20) };
  return new Promise((resolve, reject) =>
    scryptCb(Buffer.from(password, 'utf8'), salt, 32, opts, (err, key) => (err ? reject(err) : resolve(key))),
  );
}

function slotAad(repoId: string, name: string): Buffer {
  return Buffer.from(`${SLOT_AAD}${repoId}${name}`, 'utf8');
}

/**
 * Writes a new key slot holding `master` under `password` (create-if-absent under a random
 * name) and returns it. `kdf` defaults to DEFAULT_KDF and must lie within what readers accept.
 */
export async function createKeySlot(
  backend: Backend,
  repoId: string,
  master: Buffer,
  password: string,
  opts: { label: string; kdf?: ScryptParams },
): Promise<KeySlot> {
  if (master.length !== MASTER_KEY_BYTES) throw new RangeError(`a master key is ${MASTER_KEY_BYTES} bytes`);
  if (password.length === 0) throw new UsageError('the password is empty', 'give a non-empty password');
  const kdf = opts.kdf ?? DEFAULT_KDF;
  const problem = kdfProblem(kdf);
  if (problem !== undefined) throw new RangeError(`scrypt parameters out of bounds: ${problem}`);
  const label = [...opts.label].slice(0, MAX_LABEL_CHARS).join('');
  const salt = randomBytes(SALT_BYTES);
  const kek = await scrypt(password, salt, kdf);
  for (;;) {
    const id = randomBytes(16).toString('hex');
    const name = `${KEY_SLOT_PREFIX}${id}`;
    const nonce = randomBytes(NONCE_BYTES);
    const cipher = createCipheriv('aes-256-gcm', kek, nonce, { authTagLength: 16 });
    cipher.setAAD(slotAad(repoId, name));
    const wrapped = Buffer.concat([cipher.update(master), cipher.final(), cipher.getAuthTag()]);
    const json: KeySlotJson = {
      format: 'vmvault-key',
      version: 2,
      repository: repoId,
      createdAt: new Date().toISOString(),
      label,
      kdf: { name: 'scrypt', N: kdf.N, r: kdf.r, p: kdf.p, salt: salt.toString('base64') },
      nonce: nonce.toString('base64'),
      key: wrapped.toString('base64'),
    };
    const bytes = Buffer.from(`${JSON.stringify(json, null, 2)}\n`);
    if (bytes.length > MAX_KEY_SLOT_BYTES) throw new RangeError('key slot too large (label?)');
    // A name taken already (2^-128): draw another.
    if (await backend.putIfAbsent(name, bytes))
      return { name, id, createdAt: json.createdAt, label, kdf: { ...kdf }, json };
  }
}

/** Deletes a key slot (idempotent). Refusals (last slot, slot in use) are the caller's. */
export async function removeKeySlot(backend: Backend, name: string): Promise<void> {
  if (!SLOT_NAME.test(name)) throw new RangeError(`not a key slot name: ${name}`);
  await backend.delete(name);
}

/**
 * Every key slot of the repository whose JSON is sound, in name order; each damaged one (too
 * large, not JSON, a field wrong, another repository's, a name vmvault never writes) is passed to
 * `onDamaged` and left out. `repoId` (when given) is the repository the slots must belong to.
 */
export async function listKeySlots(
  backend: Backend,
  opts: { repoId?: string; onDamaged?: OnDamagedKeySlot } = {},
): Promise<KeySlot[]> {
  const { slots } = await scanKeySlots(backend, opts.repoId, opts.onDamaged);
  return slots;
}

async function scanKeySlots(
  backend: Backend,
  repoId: string | undefined,
  onDamaged: OnDamagedKeySlot | undefined,
): Promise<{ slots: KeySlot[]; damaged: number }> {
  const objs: Array<{ key: string; sizeBytes: number }> = [];
  for await (const o of backend.list(KEY_SLOT_PREFIX)) objs.push({ key: o.key, sizeBytes: o.sizeBytes });
  objs.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const slots: KeySlot[] = [];
  let damaged = 0;
  const bad = (name: string, reason: string): void => {
    damaged++;
    onDamaged?.({ name: printable(name, 120), reason });
  };
  for (const o of objs) {
    const m = SLOT_NAME.exec(o.key);
    if (!m) {
      bad(o.key, 'not a key slot name (keys/<32 hex>)');
      continue;
    }
    if (o.sizeBytes > MAX_KEY_SLOT_BYTES) {
      bad(o.key, `${o.sizeBytes} bytes, more than any key slot (${MAX_KEY_SLOT_BYTES})`);
      continue;
    }
    let raw: Buffer;
    try {
      raw = await backend.get(o.key);
    } catch (err) {
      if (isNotFound(err)) continue; // removed meanwhile
      throw err;
    }
    const parsed = parseKeySlot(raw, o.key, m[1]!, repoId);
    if (typeof parsed === 'string') bad(o.key, parsed);
    else slots.push(parsed);
  }
  return { slots, damaged };
}

function shown(value: unknown): string {
  return printable(value === undefined ? 'missing' : (JSON.stringify(value) ?? String(value)), 40);
}

/** Strict base64 of exactly `bytes` bytes, or undefined. */
function base64Of(value: unknown, bytes: number): Buffer | undefined {
  if (typeof value !== 'string' || value.length > 4 * Math.ceil(bytes / 3)) return undefined;
  const b = Buffer.from(value, 'base64');
  return b.length === bytes && b.toString('base64') === value ? b : undefined;
}

const SLOT_FIELDS = ['format', 'version', 'repository', 'createdAt', 'label', 'kdf', 'nonce', 'key'];
const KDF_FIELDS = ['name', 'N', 'r', 'p', 'salt'];

/** The slot, or why it is damaged. */
export function parseKeySlot(
  raw: Buffer,
  name: string,
  id: string,
  repoId: string | undefined,
): KeySlot | string {
  if (raw.length > MAX_KEY_SLOT_BYTES) return `${raw.length} bytes, more than any key slot`;
  let obj: unknown;
  try {
    obj = JSON.parse(raw.toString('utf8'));
  } catch {
    return 'not valid JSON';
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return 'not a JSON object';
  const s = obj as Record<string, unknown>;
  for (const k of Object.keys(s)) if (!SLOT_FIELDS.includes(k)) return `unknown field ${shown(k)}`;
  if (s.format !== 'vmvault-key') return `format is ${shown(s.format)}, not "vmvault-key"`;
  if (s.version !== 2) return `version is ${shown(s.version)}, not 2`;
  if (typeof s.repository !== 'string' || !/^[0-9a-f]{64}$/.test(s.repository))
    return `repository is ${shown(s.repository)}, not 64 hex digits`;
  if (repoId !== undefined && s.repository !== repoId)
    return `belongs to another repository (${s.repository.slice(0, 8)})`;
  if (
    typeof s.createdAt !== 'string' ||
    !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$/.test(s.createdAt) ||
    !Number.isFinite(Date.parse(s.createdAt))
  )
    return `createdAt is ${shown(s.createdAt)}, not a UTC time`;
  if (typeof s.label !== 'string' || [...s.label].length > MAX_LABEL_CHARS)
    return `label is not a string of at most ${MAX_LABEL_CHARS} characters`;
  const kdf = s.kdf;
  if (typeof kdf !== 'object' || kdf === null || Array.isArray(kdf)) return 'kdf is not an object';
  const k = kdf as Record<string, unknown>;
  for (const f of Object.keys(k)) if (!KDF_FIELDS.includes(f)) return `unknown field kdf.${shown(f)}`;
  if (k.name !== 'scrypt') return `kdf.name is ${shown(k.name)}, not "scrypt"`;
  const problem = kdfProblem({ N: k.N, r: k.r, p: k.p });
  if (problem !== undefined) return problem;
  if (base64Of(k.salt, SALT_BYTES) === undefined) return `kdf.salt is not ${SALT_BYTES} bytes of base64`;
  if (base64Of(s.nonce, NONCE_BYTES) === undefined) return `nonce is not ${NONCE_BYTES} bytes of base64`;
  if (base64Of(s.key, WRAPPED_BYTES) === undefined) return `key is not ${WRAPPED_BYTES} bytes of base64`;
  const json = s as unknown as KeySlotJson;
  return {
    name,
    id,
    createdAt: json.createdAt,
    label: json.label,
    kdf: { N: json.kdf.N, r: json.kdf.r, p: json.kdf.p },
    json,
  };
}

/** The master key in `slot` when `password` is its password, else undefined. */
export async function openKeySlot(
  slot: KeySlot,
  repoId: string,
  password: string,
): Promise<Buffer | undefined> {
  return unwrapWith(slot, repoId, await slotKek(slot, password));
}

/** The key that wraps `slot`'s master key, from `password` (scrypt: about a second). */
function slotKek(slot: KeySlot, password: string): Promise<Buffer> {
  return scrypt(password, base64Of(slot.json.kdf.salt, SALT_BYTES)!, slot.kdf);
}

/** The master key `slot` wraps under `kek`, or undefined when `kek` is not its key. */
function unwrapWith(slot: KeySlot, repoId: string, kek: Buffer): Buffer | undefined {
  const nonce = base64Of(slot.json.nonce, NONCE_BYTES)!;
  const wrapped = base64Of(slot.json.key, WRAPPED_BYTES)!;
  const d = createDecipheriv('aes-256-gcm', kek, nonce, { authTagLength: 16 });
  d.setAAD(slotAad(repoId, slot.name));
  d.setAuthTag(wrapped.subarray(MASTER_KEY_BYTES));
  const master = d.update(wrapped.subarray(0, MASTER_KEY_BYTES));
  try {
    d.final();
  } catch {
    return undefined;
  }
  return master;
}

/**
 * Unlocks the master key: tries the slots in name order (the slot `hint` names, by id or name,
 * first), at most MAX_KEY_SLOTS_TRIED. Wrong password → WrongPasswordError (exit 12); no usable
 * slot → NoKeySlotError (exit 20). Damaged slots go to `onDamaged`.
 */
export async function unlockMasterKey(
  backend: Backend,
  repoId: string,
  password: string,
  opts: { hint?: string; onDamaged?: OnDamagedKeySlot; cache?: KekCache } = {},
): Promise<{ master: Buffer; slotName: string }> {
  const { slots, damaged } = await scanKeySlots(backend, repoId, opts.onDamaged);
  if (slots.length === 0) throw new NoKeySlotError(backend.location, damaged);
  const cache = opts.cache;
  if (cache !== undefined) {
    // The slot this password opened last time, with its scrypt output kept: no scrypt now.
    for (const slot of slots) {
      const kek = cache.get(repoId, slot, password);
      const master = kek === undefined ? undefined : unwrapWith(slot, repoId, kek);
      if (master !== undefined) return { master, slotName: slot.name };
    }
  }
  const hint = opts.hint;
  const first = hint === undefined ? -1 : slots.findIndex((s) => s.id === hint || s.name === hint);
  const order = first < 0 ? slots : [slots[first]!, ...slots.filter((_, i) => i !== first)];
  for (const slot of order.slice(0, MAX_KEY_SLOTS_TRIED)) {
    const kek = await slotKek(slot, password);
    const master = unwrapWith(slot, repoId, kek);
    if (master === undefined) continue;
    cache?.put(repoId, slot, password, kek);
    return { master, slotName: slot.name };
  }
  throw new WrongPasswordError(backend.location, slots.length);
}

/**
 * A cache of unlocked key slots (opt-in: VMVAULT_KEY_CACHE=DIR, docs/cli.md "Passwords"): for a
 * repository, the scrypt output (KEK) of the slot a password opened, so that the next command
 * given the same password skips the second of scrypt. An entry is used only for the same slot
 * (name, salt, parameters) and the same password (a keyed check of it under the KEK): a wrong
 * password still fails, and a removed or changed slot (`key remove`, `key passwd`) makes the entry
 * useless. The entry is a secret as strong as the password itself (it unwraps the master key from
 * the repository's slot): files are 0600 in a 0700 directory, and a directory others can read or
 * write is not used. Any fault of the cache is a miss, never an error.
 */
export interface KekCache {
  get(repoId: string, slot: KeySlot, password: string): Buffer | undefined;
  put(repoId: string, slot: KeySlot, password: string, kek: Buffer): void;
}

interface KekCacheEntry {
  v: 1;
  slot: string;
  salt: string;
  N: number;
  r: number;
  p: number;
  check: string;
  kek: string;
}

const KEK_CHECK_CONTEXT = Buffer.from('vmvault kek cache check v1\0', 'utf8');

function kekCheck(kek: Buffer, password: string): Buffer {
  return keyedHash(kek, Buffer.concat([KEK_CHECK_CONTEXT, Buffer.from(password, 'utf8')]));
}

/** A KekCache of one file per repository in `dir`; `warn` hears once why it is not used. */
export function dirKekCache(dir: string, warn: (message: string) => void = () => {}): KekCache {
  let warned = false;
  const usable = (create: boolean): boolean => {
    try {
      if (create) mkdirSync(dir, { recursive: true, mode: 0o700 });
      const st = statSync(dir);
      if (!st.isDirectory() || (st.mode & 0o077) !== 0 || (process.getuid && st.uid !== process.getuid())) {
        if (!warned)
          warn(
            `key cache ${dir} is not used: it must be a directory of this user that nobody else can read or write (chmod 700)`,
          );
        warned = true;
        return false;
      }
      return true;
    } catch {
      return false;
    }
  };
  const file = (repoId: string): string | undefined =>
    /^[0-9a-f]{32,64}$/.test(repoId) ? join(dir, `${repoId}.json`) : undefined;
  return {
    get(repoId, slot, password) {
      const f = file(repoId);
      if (f === undefined || !usable(false)) return undefined;
      try {
        const raw = readFileSync(f);
        if (raw.length > 4096) return undefined;
        const e = JSON.parse(raw.toString('utf8')) as Partial<KekCacheEntry>;
        if (e.v !== 1 || e.slot !== slot.name || e.salt !== slot.json.kdf.salt) return undefined;
        if (e.N !== slot.kdf.N || e.r !== slot.kdf.r || e.p !== slot.kdf.p) return undefined;
        if (typeof e.kek !== 'string' || !/^[0-9a-f]{64}$/.test(e.kek)) return undefined;
        if (typeof e.check !== 'string' || !/^[0-9a-f]{64}$/.test(e.check)) return undefined;
        const kek = Buffer.from(e.kek, 'hex');
        return timingSafeEqual(kekCheck(kek, password), Buffer.from(e.check, 'hex')) ? kek : undefined;
      } catch {
        return undefined;
      }
    },
    put(repoId, slot, password, kek) {
      const f = file(repoId);
      if (f === undefined || !usable(true)) return;
      const entry: KekCacheEntry = {
        v: 1,
        slot: slot.name,
        salt: slot.json.kdf.salt,
        N: slot.kdf.N,
        r: slot.kdf.r,
        p: slot.kdf.p,
        check: kekCheck(kek, password).toString('hex'),
        kek: kek.toString('hex'),
      };
      const tmp = `${f}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
      try {
        writeFileSync(tmp, JSON.stringify(entry), { mode: 0o600, flag: 'wx' });
        chmodSync(tmp, 0o600);
        renameSync(tmp, f);
      } catch {
        // a cache that cannot be written is only slower
        try {
          unlinkSync(tmp);
        } catch {
          // not there
        }
      }
    },
  };
}
