import { printable } from '../../util/index.js';
import type { Backend } from '../backend/backend.js';
import { BlobFormatError } from '../blob.js';
import type { BlobCodec } from '../codec.js';
import { isNotFound } from '../errors.js';

/**
 * Garbage collection steps (docs/gc.md): sealed objects of kind 5 under `gc/<generation>/<step>`,
 * written once each. A generation is condemned (`2-condemned`: the packs it will delete and what
 * the mark saw), then waits (`2-wait`: the sessions alive right after the condemnation), then is
 * done (`3-deleted`). Writers read them at start: the packs of a generation without `3-deleted`
 * are absent to them.
 */
export const GC_PREFIX = 'gc/';
/** Plaintext bound of one step object (16 MiB is the object bound; a condemned list of 200 000 packs is ~8 MiB). */
export const MAX_GC_STEP_BYTES = 16 * 1024 * 1024;
/** Packs one generation condemns at most (the rest waits for the next one). */
export const MAX_CONDEMNED_PACKS = 200_000;
export type GcStepName = '2-condemned' | '2-wait' | '3-deleted';
const STEPS: readonly GcStepName[] = ['2-condemned', '2-wait', '3-deleted'];
const KEY_RE = /^gc\/(\d{10})\/(2-condemned|2-wait|3-deleted)$/;
const PACK_KEY_RE = /^(data|meta)\/([0-9a-f]{2})\/([0-9a-f]{32})$/;
const SNAP_RE = /^[0-9a-f]{64}$/;
const SESSION_RE = /^[0-9a-f]{32}$/;

export interface CondemnedStep {
  version: 1;
  generation: number;
  /** Server time (ms) before the mark listed the snapshots. */
  markedMs: number;
  /** Server time (ms) of the condemnation. */
  condemnedMs: number;
  /** Snapshot ids the mark walked. */
  snapshots: string[];
  /** Pack keys (`data/hh/…`, `meta/hh/…`) to delete. */
  packs: string[];
  /** Of those, the packs whose live records were first copied elsewhere (informative). */
  repacked: number;
  /** Bytes of the new packs the repack wrote (what the deletion frees is net of them). */
  writtenBytes: number;
}
export interface WaitStep {
  version: 1;
  generation: number;
  /** Sessions alive when the condemnation had been written (their ids). */
  sessions: string[];
}
export interface DeletedStep {
  version: 1;
  generation: number;
  deletedMs: number;
  deleted: number;
  deletedBytes: number;
  /** Condemned packs kept after all: a snapshot committed meanwhile needs them. */
  uncondemned: string[];
}

export interface Generation {
  generation: number;
  condemned?: CondemnedStep;
  wait?: WaitStep;
  deleted?: DeletedStep;
  /** Keys of this generation's step objects. */
  keys: string[];
}

export const gcKey = (generation: number, step: GcStepName): string =>
  `${GC_PREFIX}${String(generation).padStart(10, '0')}/${step}`;

const binderOf = (generation: number, step: GcStepName): Buffer => {
  const b = Buffer.alloc(16);
  b.writeUInt32BE(generation, 0);
  b.writeUInt32BE(STEPS.indexOf(step) + 1, 4);
  return b;
};

export async function writeStep(
  backend: Backend,
  codec: BlobCodec,
  step: GcStepName,
  body: CondemnedStep | WaitStep | DeletedStep,
): Promise<void> {
  const key = gcKey(body.generation, step);
  const sealed = codec.sealObject(
    'gc',
    Buffer.from(JSON.stringify(body), 'utf8'),
    binderOf(body.generation, step),
    {
      name: key,
    },
  );
  await backend.put(key, sealed);
}

function fail(what: string): never {
  throw new BlobFormatError(what);
}
const int = (o: Record<string, unknown>, k: string): number => {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) fail(`${k} is not a whole number`);
  return v;
};
const strings = (o: Record<string, unknown>, k: string, re: RegExp, max: number): string[] => {
  const v = o[k];
  if (!Array.isArray(v) || v.length > max || !v.every((x) => typeof x === 'string' && re.test(x)))
    fail(`${k} is not a list of at most ${max} names`);
  return v as string[];
};

function parseStep(
  step: GcStepName,
  generation: number,
  json: Buffer,
): CondemnedStep | WaitStep | DeletedStep {
  const v: unknown = JSON.parse(json.toString('utf8'));
  if (typeof v !== 'object' || v === null || Array.isArray(v)) fail('not an object');
  const o = v as Record<string, unknown>;
  if (o.version !== 1) fail('unknown version');
  if (int(o, 'generation') !== generation) fail('its generation is not the one its key names');
  if (step === '2-condemned')
    return {
      version: 1,
      generation,
      markedMs: int(o, 'markedMs'),
      condemnedMs: int(o, 'condemnedMs'),
      snapshots: strings(o, 'snapshots', SNAP_RE, 1_000_000),
      packs: strings(o, 'packs', PACK_KEY_RE, MAX_CONDEMNED_PACKS).filter(
        (k) => PACK_KEY_RE.exec(k)![2] === PACK_KEY_RE.exec(k)![3]!.slice(0, 2),
      ),
      repacked: int(o, 'repacked'),
      writtenBytes: int(o, 'writtenBytes'),
    };
  if (step === '2-wait')
    return { version: 1, generation, sessions: strings(o, 'sessions', SESSION_RE, 100_000) };
  return {
    version: 1,
    generation,
    deletedMs: int(o, 'deletedMs'),
    deleted: int(o, 'deleted'),
    deletedBytes: int(o, 'deletedBytes'),
    uncondemned: strings(o, 'uncondemned', PACK_KEY_RE, MAX_CONDEMNED_PACKS),
  };
}

/** A step object that could not be read (damaged, hostile), and why. */
export interface DamagedStep {
  key: string;
  reason: string;
}

/**
 * Every generation in `gc/` (with `pendingOnly`: only the `2-condemned` steps of generations not
 * finished), oldest first, with its steps read and validated. A damaged step is
 * reported in `damaged` and treated as absent (a damaged `2-condemned` therefore condemns nothing:
 * writers then reuse its packs, and the generation never deletes: safe both ways).
 */
export async function readGenerations(
  backend: Backend,
  codec: BlobCodec,
  opts: { pendingOnly?: boolean } = {},
): Promise<{ generations: Generation[]; damaged: DamagedStep[] }> {
  const byGen = new Map<number, Generation>();
  const damaged: DamagedStep[] = [];
  const found: Array<{ key: string; gen: number; step: GcStepName; size: number }> = [];
  for await (const o of backend.list(GC_PREFIX)) {
    const m = KEY_RE.exec(o.key);
    if (!m) continue;
    found.push({ key: o.key, gen: Number(m[1]), step: m[2] as GcStepName, size: o.sizeBytes });
  }
  // A writer needs only generations without `3-deleted`: the steps of finished ones (the newest
  // is kept as history) are not read at its start.
  const finished = new Set(found.filter((f) => f.step === '3-deleted').map((f) => f.gen));
  for (const f of found) {
    if (opts.pendingOnly && (finished.has(f.gen) || f.step !== '2-condemned')) continue;
    let g = byGen.get(f.gen);
    if (!g) byGen.set(f.gen, (g = { generation: f.gen, keys: [] }));
    g.keys.push(f.key);
    try {
      if (f.size > MAX_GC_STEP_BYTES + 128) fail(`${f.size} bytes, more than a GC step`);
      const blob = await backend.get(f.key);
      const json = codec.openObject('gc', blob, { name: f.key, maxPlaintextBytes: MAX_GC_STEP_BYTES });
      // The binder is checked by the AAD (the key is in it); the generation field by parseStep.
      const body = parseStep(f.step, f.gen, json);
      if (f.step === '2-condemned') g.condemned = body as CondemnedStep;
      else if (f.step === '2-wait') g.wait = body as WaitStep;
      else g.deleted = body as DeletedStep;
    } catch (err) {
      if (isNotFound(err)) continue; // removed by the prune that finished it
      if (err instanceof BlobFormatError || err instanceof SyntaxError)
        damaged.push({ key: f.key, reason: printable(err.message, 200) });
      else throw err;
    }
  }
  return { generations: [...byGen.values()].sort((a, b) => a.generation - b.generation), damaged };
}

/** Generations condemned and not yet done: their packs (minus nothing) are absent to writers. */
export function pendingGenerations(
  gens: readonly Generation[],
): Array<Generation & { condemned: CondemnedStep }> {
  return gens.filter((g): g is Generation & { condemned: CondemnedStep } => !!g.condemned && !g.deleted);
}
