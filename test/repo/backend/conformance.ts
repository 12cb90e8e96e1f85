import { describe, expect, it, beforeEach, afterEach } from 'vitest';
import type { Backend } from '../../../src/repo/index.js';
import { BackendError } from '../../../src/repo/index.js';

export interface BackendFactory {
  make(): Promise<{ backend: Backend; cleanup: () => Promise<void> }>;
  /** Writers for the create-if-absent race may run in other processes (local). */
  raceInProcesses?: (key: string, writers: number) => Promise<boolean[]>;
}

/**
 * The storage backend conformance suite (restic's internal/backend/test): every backend runs it.
 */
export function defineBackendConformance(name: string, factory: BackendFactory): void {
  describe(`backend conformance: ${name}`, () => {
    let backend: Backend;
    let cleanup: () => Promise<void>;
    beforeEach(async () => {
      ({ backend, cleanup } = await factory.make());
    });
    afterEach(async () => {
      await backend.close();
      await cleanup();
    });

    it('put/get round trip, overwrite replaces', async () => {
      await backend.put('a/b/c', Buffer.from('hello'));
      expect((await backend.get('a/b/c')).toString()).toBe('hello');
      await backend.put('a/b/c', Buffer.from('world!'));
      expect((await backend.get('a/b/c')).toString()).toBe('world!');
      expect(await backend.stat('a/b/c')).toEqual({ key: 'a/b/c', sizeBytes: 6 });
    });

    it('empty objects and binary content survive', async () => {
      await backend.put('empty', Buffer.alloc(0));
      expect((await backend.get('empty')).length).toBe(0);
      const bin = Buffer.from(Array.from({ length: 256 }, (_, i) => i));
      await backend.put('bin', bin);
      expect((await backend.get('bin')).equals(bin)).toBe(true);
    });

    it('ranged get, and a range past the end is a permanent range error', async () => {
      await backend.put('r', Buffer.from('0123456789'));
      expect((await backend.getRange('r', 2, 3)).toString()).toBe('234');
      expect((await backend.getRange('r', 0, 10)).toString()).toBe('0123456789');
      expect((await backend.getRange('r', 10, 0)).length).toBe(0);
      const err = await backend.getRange('r', 8, 5).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(BackendError);
      expect((err as BackendError).kind).toBe('range');
      expect((err as BackendError).retryable).toBe(false);
    });

    it('a missing key gives not-found', async () => {
      for (const op of [() => backend.get('nope/x'), () => backend.getRange('nope/x', 0, 1)]) {
        const err = await op().catch((e: unknown) => e);
        expect(err).toBeInstanceOf(BackendError);
        expect((err as BackendError).kind).toBe('not-found');
      }
      expect(await backend.exists('nope/x')).toBe(false);
      expect(await backend.stat('nope/x')).toBeUndefined();
    });

    it('putIfAbsent creates once and never overwrites', async () => {
      expect(await backend.putIfAbsent('k', Buffer.from('first'))).toBe(true);
      expect(await backend.putIfAbsent('k', Buffer.from('second'))).toBe(false);
      expect((await backend.get('k')).toString()).toBe('first');
    });

    it('putIfAbsent raced by many concurrent writers: exactly one wins, all see the same bytes', async () => {
      const data = Buffer.alloc(256 * 1024, 7);
      const results = await Promise.all(
        Array.from({ length: 16 }, () => backend.putIfAbsent('data/ab/race', data)),
      );
      expect(results.filter(Boolean)).toHaveLength(1);
      expect((await backend.get('data/ab/race')).equals(data)).toBe(true);
      if (factory.raceInProcesses) {
        const r2 = await factory.raceInProcesses('data/cd/race2', 6);
        expect(r2.filter(Boolean)).toHaveLength(1);
      }
    });

    it('list by prefix returns every key below it, beyond one page', async () => {
      const keys: string[] = [];
      for (let i = 0; i < 1100; i++)
        keys.push(`data/${(i % 256).toString(16).padStart(2, '0')}/${i.toString(16).padStart(64, '0')}`);
      for (let i = 0; i < keys.length; i += 100)
        await Promise.all(keys.slice(i, i + 100).map((k) => backend.put(k, Buffer.from('x'))));
      await backend.put('snapshots/one', Buffer.from('s'));
      const listed: string[] = [];
      for await (const o of backend.list('data/')) {
        listed.push(o.key);
        expect(o.sizeBytes).toBe(1);
      }
      expect(listed.sort()).toEqual([...keys].sort());
      const some: string[] = [];
      for await (const o of backend.list('data/0a/')) some.push(o.key);
      expect(some.sort()).toEqual(keys.filter((k) => k.startsWith('data/0a/')).sort());
      const snaps: string[] = [];
      for await (const o of backend.list('snap')) snaps.push(o.key);
      expect(snaps).toEqual(['snapshots/one']);
      const none: string[] = [];
      for await (const o of backend.list('missing/')) none.push(o.key);
      expect(none).toEqual([]);
    });

    it('delete is idempotent', async () => {
      await backend.put('d/x', Buffer.from('1'));
      await backend.delete('d/x');
      await backend.delete('d/x');
      expect(await backend.exists('d/x')).toBe(false);
    });

    it('invalid keys are refused', async () => {
      for (const k of ['', '/abs', 'a/../b', 'trailing/']) {
        await expect(backend.put(k, Buffer.from('x'))).rejects.toThrow(/invalid object key/);
      }
    });

    it('no partial object is ever visible under its final name', async () => {
      const big = Buffer.alloc(8 * 1024 * 1024, 0x5a);
      let sawPartial = false;
      let done = false;
      const writer = (async () => {
        for (let i = 0; i < 3; i++) {
          await backend.put('p/obj', big);
          await backend.delete('p/obj');
        }
        done = true;
      })();
      while (!done) {
        const st = await backend.stat('p/obj');
        if (st && st.sizeBytes !== big.length) sawPartial = true;
        await new Promise((r) => setImmediate(r));
      }
      await writer;
      expect(sawPartial).toBe(false);
    });
  });
}
