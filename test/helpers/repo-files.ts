/**
 * Where a chunk's or page's record lies in a local format 2 repository, for tests that damage
 * the repository by hand (flip a byte, delete a pack) the way a disk or an attacker would.
 */
import { open, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { Repository } from '../../src/repo/index.js';
import { packKey } from '../../src/repo/chunk-index/entry.js';

export interface RecordFile {
  /** The pack file. */
  path: string;
  /** The pack's key (data/hh/… or meta/hh/…). */
  key: string;
  offset: number;
  length: number;
}

/** The record of chunk (or page) `id` (64 hex) in the repository at `repoPath`. */
export async function recordFile(repoPath: string, id: string, password?: string): Promise<RecordFile> {
  const repo = await Repository.open(repoPath, {
    workers: 0,
    ...(password === undefined ? {} : { password: async () => password }),
  });
  try {
    const e = await repo.index.lookup(Buffer.from(id, 'hex'));
    if (!e) throw new Error(`no record of ${id.slice(0, 12)} in ${repoPath}`);
    const key = packKey(e);
    return { path: join(repoPath, ...key.split('/')), key, offset: e.offset, length: e.length };
  } finally {
    await repo.close();
  }
}

/** Flips one byte in the middle of the record of `id` (its payload: the tag or GCM then fails). */
export async function corruptRecord(repoPath: string, id: string, password?: string): Promise<RecordFile> {
  const r = await recordFile(repoPath, id, password);
  const fh = await open(r.path, 'r+');
  try {
    const at = r.offset + Math.floor(r.length / 2);
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, at);
    b[0] = b[0]! ^ 0x5a;
    await fh.write(b, 0, 1, at);
  } finally {
    await fh.close();
  }
  return r;
}

/** Deletes the pack holding `id` (every other record of that pack goes with it). */
export async function deletePackOf(repoPath: string, id: string, password?: string): Promise<RecordFile> {
  const r = await recordFile(repoPath, id, password);
  await unlink(r.path);
  return r;
}
