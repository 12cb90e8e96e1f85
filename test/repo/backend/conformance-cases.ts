import assert from 'node:assert/strict';
import type { Backend } from '../../../src/repo/index.js';
import { BackendError } from '../../../src/repo/index.js';

/**
 * The storage backend conformance suite (restic's internal/backend/test), as plain functions with
 * node:assert, so that it runs under vitest (conformance.ts) and inside a worker thread alike
 * (conformance-worker.ts). Each case gets a fresh, empty backend.
 */
export interface ConformanceCase {
  name: string;
  run(backend: Backend): Promise<void>;
}

async function errorOf(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  return assert.fail('expected the operation to fail');
}

function assertKind(err: unknown, kind: string): asserts err is BackendError {
  assert.ok(err instanceof BackendError, `expected a BackendError, got ${String(err)}`);
  assert.equal(err.kind, kind);
}

async function keysOf(backend: Backend, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const o of backend.list(prefix)) out.push(o.key);
  return out;
}

/**
 * A gather list of `n` parts of varied sizes (every third one empty), from a seed; with its
 * concatenation.
 */
function gatherList(n: number, seed: number): { parts: Buffer[]; whole: Buffer } {
  const parts: Buffer[] = [];
  for (let i = 0; i < n; i++) {
    const len = i % 3 === 1 ? 0 : ((i * 37 + seed) % 61) + 1;
    parts.push(Buffer.from(Array.from({ length: len }, (_, j) => (seed + i * 7 + j) & 0xff)));
  }
  return { parts, whole: Buffer.concat(parts) };
}

export const conformanceCases: ConformanceCase[] = [
  {
    name: 'capabilities are stated',
    async run(b) {
      const c = b.capabilities;
      assert.ok(Number.isSafeInteger(c.parallelOps) && c.parallelOps >= 1);
      for (const k of ['atomicCreate', 'needsBarrier', 'modTimes', 'preferLargeReads'] as const)
        assert.equal(typeof c[k], 'boolean');
    },
  },
  {
    name: 'put/get round trip, overwrite replaces',
    async run(b) {
      await b.put('a/b/c', Buffer.from('hello'));
      assert.equal((await b.get('a/b/c')).toString(), 'hello');
      await b.put('a/b/c', Buffer.from('world!'));
      assert.equal((await b.get('a/b/c')).toString(), 'world!');
      const st = await b.stat('a/b/c');
      assert.equal(st?.key, 'a/b/c');
      assert.equal(st?.sizeBytes, 6);
    },
  },
  {
    name: 'empty objects and binary content survive',
    async run(b) {
      await b.put('empty', Buffer.alloc(0));
      assert.equal((await b.get('empty')).length, 0);
      const bin = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      await b.put('bin', bin);
      assert.ok((await b.get('bin')).equals(bin));
    },
  },
  {
    name: 'ranged get, and a range past the end is a permanent range error',
    async run(b) {
      await b.put('r', Buffer.from('0123456789'));
      assert.equal((await b.getRange('r', 2, 3)).toString(), '234');
      assert.equal((await b.getRange('r', 0, 10)).toString(), '0123456789');
      assert.equal((await b.getRange('r', 10, 0)).length, 0);
      for (const [o, l] of [
        [8, 5],
        [11, 0],
        [-1, 2],
      ] as const) {
        const err = await errorOf(b.getRange('r', o, l));
        assertKind(err, 'range');
        assert.equal(err.retryable, false);
      }
    },
  },
  {
    name: "ranged read into a caller's buffer touches only that buffer",
    async run(b) {
      await b.put('ri', Buffer.from('0123456789'));
      const whole = Buffer.alloc(12, '.');
      const dest = whole.subarray(4, 8);
      // It resolves to the object's whole size (a header read learns the size in the same call).
      assert.equal(await b.getRangeInto('ri', 3, dest), 10);
      assert.equal(whole.toString(), '....3456....');
      assert.equal(await b.getRangeInto('ri', 10, Buffer.alloc(0)), 10);
      assertKind(await errorOf(b.getRangeInto('ri', 7, Buffer.alloc(4))), 'range');
      assertKind(await errorOf(b.getRangeInto('nope/x', 0, Buffer.alloc(1))), 'not-found');
    },
  },
  {
    name: 'a missing key gives not-found',
    async run(b) {
      assertKind(await errorOf(b.get('nope/x')), 'not-found');
      assertKind(await errorOf(b.getRange('nope/x', 0, 1)), 'not-found');
      assert.equal(await b.exists('nope/x'), false);
      assert.equal(await b.stat('nope/x'), undefined);
    },
  },
  {
    name: 'putIfAbsent creates once and never overwrites; after delete it creates again',
    async run(b) {
      assert.equal(await b.putIfAbsent('k', Buffer.from('first')), true);
      assert.equal(await b.putIfAbsent('k', Buffer.from('second')), false);
      assert.equal((await b.get('k')).toString(), 'first');
      await b.delete('k');
      assert.equal(await b.putIfAbsent('k', Buffer.from('third')), true);
      assert.equal((await b.get('k')).toString(), 'third');
    },
  },
  {
    name: 'putIfAbsent raced by many concurrent writers: exactly one wins, all see the same bytes',
    async run(b) {
      const data = Buffer.alloc(256 * 1024, 7);
      const results = await Promise.all(
        Array.from({ length: 16 }, () => b.putIfAbsent('data/ab/race', data)),
      );
      assert.equal(results.filter(Boolean).length, 1);
      assert.ok((await b.get('data/ab/race')).equals(data));
    },
  },
  {
    name: 'list by prefix returns every key below it once, with its size, beyond one page',
    async run(b) {
      const keys: string[] = [];
      for (let i = 0; i < 1100; i++)
        keys.push(`data/${(i % 256).toString(16).padStart(2, '0')}/${i.toString(16).padStart(64, '0')}`);
      for (let i = 0; i < keys.length; i += 100)
        await Promise.all(keys.slice(i, i + 100).map((k) => b.put(k, Buffer.from('x'))));
      await b.put('snapshots/one', Buffer.from('s'));
      const listed: string[] = [];
      for await (const o of b.list('data/')) {
        listed.push(o.key);
        assert.equal(o.sizeBytes, 1);
      }
      assert.deepEqual(listed.sort(), [...keys].sort());
      assert.deepEqual(
        (await keysOf(b, 'data/0a/')).sort(),
        keys.filter((k) => k.startsWith('data/0a/')).sort(),
      );
      assert.deepEqual(await keysOf(b, 'snap'), ['snapshots/one']);
      assert.deepEqual(await keysOf(b, 'missing/'), []);
      // A listing left early is fine, and the backend still works.
      for await (const o of b.list('data/')) {
        assert.ok(o.key.startsWith('data/'));
        break;
      }
      assert.equal((await b.get('snapshots/one')).toString(), 's');
    },
  },
  {
    name: 'stat and list report modification times when the backend has them',
    async run(b) {
      const before = Date.now();
      await b.put('m/one', Buffer.from('1'));
      const st = await b.stat('m/one');
      const [listed] = await (async () => {
        const out = [];
        for await (const o of b.list('m/')) out.push(o);
        return out;
      })();
      if (!b.capabilities.modTimes) return;
      for (const t of [st?.modifiedMs, listed?.modifiedMs]) {
        assert.equal(typeof t, 'number');
        // File systems may round times down (to a second at worst).
        assert.ok(t! >= before - 2000 && t! <= Date.now() + 1000, `modification time ${t} is not now`);
      }
    },
  },
  {
    name: 'the durability barrier: objects written (durable at once or at the barrier), none, keys absent',
    async run(b) {
      await b.put('bar/a/1', Buffer.from('1'));
      assert.equal(await b.putIfAbsent('bar/b/2', Buffer.from('2')), true);
      await b.barrier(['bar/a/1', 'bar/b/2']);
      await b.barrier([]);
      await b.barrier(['bar/c/absent']);
      assert.equal((await b.get('bar/b/2')).toString(), '2');
      // Writes whose durability waits for the barrier are there, whole, at once.
      await b.put('bar/d/3', Buffer.from('3'), { durable: 'at-barrier' });
      assert.equal(await b.putIfAbsent('bar/e/4', Buffer.from('4'), { durable: 'at-barrier' }), true);
      assert.equal(await b.putIfAbsent('bar/e/4', Buffer.from('5'), { durable: 'at-barrier' }), false);
      assert.equal((await b.get('bar/d/3')).toString(), '3');
      await b.barrier(['bar/d/3', 'bar/e/4']);
      assert.equal((await b.get('bar/e/4')).toString(), '4');
    },
  },
  {
    name: 'delete is idempotent',
    async run(b) {
      await b.put('d/x', Buffer.from('1'));
      await b.delete('d/x');
      await b.delete('d/x');
      await b.delete('d/never');
      assert.equal(await b.exists('d/x'), false);
      assert.deepEqual(await keysOf(b, 'd/'), []);
    },
  },
  {
    name: 'deleteMany (where offered) deletes every key given, absent ones included',
    async run(b) {
      if (!b.deleteMany) return;
      const keys = Array.from({ length: 30 }, (_, i) => `dm/${String(i).padStart(2, '0')}`);
      for (const k of keys) await b.put(k, Buffer.from(k));
      await b.put('dm/keep', Buffer.from('k'));
      await b.deleteMany([...keys, 'dm/never']);
      assert.deepEqual(await keysOf(b, 'dm/'), ['dm/keep']);
      await b.deleteMany([]);
    },
  },
  {
    name: 'invalid keys are refused',
    async run(b) {
      for (const k of ['', '/abs', 'a/../b', 'trailing/']) {
        await assert.rejects(b.put(k, Buffer.from('x')), /invalid object key/);
      }
    },
  },
  {
    name: 'no partial object is ever visible under its final name',
    async run(b) {
      const big = Buffer.alloc(8 * 1024 * 1024, 0x5a);
      let sawPartial = false;
      let done = false;
      const writer = (async () => {
        for (let i = 0; i < 3; i++) {
          await b.put('p/obj', big);
          await b.delete('p/obj');
        }
      })().finally(() => (done = true));
      while (!done) {
        const st = await b.stat('p/obj');
        if (st && st.sizeBytes !== big.length) sawPartial = true;
        await new Promise((r) => setImmediate(r));
      }
      await writer;
      assert.equal(sawPartial, false);
    },
  },
  {
    name: 'put and putIfAbsent of a gather list (0, 1, 3, 2000 parts, empty ones between) store the concatenation',
    async run(b) {
      for (const n of [0, 1, 3, 2000]) {
        const a = gatherList(n, n + 1);
        const copy = [...a.parts];
        await b.put(`g/put/${n}`, a.parts);
        assert.ok((await b.get(`g/put/${n}`)).equals(a.whole), `put of ${n} parts`);
        assert.equal((await b.stat(`g/put/${n}`))?.sizeBytes, a.whole.length);
        const c = gatherList(n, n + 5);
        assert.equal(await b.putIfAbsent(`g/pia/${n}`, c.parts), true);
        assert.ok((await b.get(`g/pia/${n}`)).equals(c.whole), `putIfAbsent of ${n} parts`);
        assert.equal((await b.stat(`g/pia/${n}`))?.sizeBytes, c.whole.length);
        // The caller's list is left as it was.
        assert.equal(a.parts.length, copy.length);
        assert.ok(a.parts.every((p, i) => p === copy[i]));
      }
      // A gather list replaces an object as a single buffer does, durable at the barrier too.
      const r = gatherList(5, 9);
      await b.put('g/put/3', r.parts, { durable: 'at-barrier' });
      await b.barrier(['g/put/3']);
      assert.ok((await b.get('g/put/3')).equals(r.whole));
      // Parts larger than a page, more than IOV_MAX of them.
      const big = Array.from({ length: 1100 }, (_, i) => Buffer.alloc(i % 2 ? 0 : 9000, i & 0xff));
      assert.equal(await b.putIfAbsent('g/big', big, { durable: 'at-barrier' }), true);
      assert.ok((await b.get('g/big')).equals(Buffer.concat(big)));
    },
  },
  {
    name: 'putIfAbsent of a gather list when the object is present returns false and keeps the old bytes',
    async run(b) {
      await b.put('gp/k', Buffer.from('old bytes'));
      const a = gatherList(3, 4);
      assert.equal(await b.putIfAbsent('gp/k', a.parts), false);
      assert.equal((await b.get('gp/k')).toString(), 'old bytes');
      const first = gatherList(2000, 2);
      assert.equal(await b.putIfAbsent('gp/l', first.parts), true);
      assert.equal(await b.putIfAbsent('gp/l', gatherList(2000, 3).parts), false);
      assert.equal(await b.putIfAbsent('gp/l', []), false);
      assert.ok((await b.get('gp/l')).equals(first.whole));
    },
  },
];
