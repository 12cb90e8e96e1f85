/**
 * Where a rotating `check --read-data` (`--max-time`, `--read-data-subset P%`) stopped: a local
 * state file per repository, `$XDG_STATE_HOME/vmvault/check-<repository id>.json` (default
 * ~/.local/state/vmvault). Local because the repository may be shared and opened read-only by
 * check. One cursor per selection: `all`, or `K/N` for a part read with a time budget.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';

export interface CheckCursor {
  /** The last pack name (32 hex) read: the next run starts after it, in name order. */
  lastPack: string;
  /** When it was written (ISO 8601). */
  time: string;
}

interface StateFile {
  version: 1;
  repository: string;
  cursors: Record<string, CheckCursor>;
}

/** The state directory: $XDG_STATE_HOME/vmvault when absolute, else ~/.local/state/vmvault. */
export function stateDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_STATE_HOME;
  return join(xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.local', 'state'), 'vmvault');
}

export function checkStatePath(repoId: string, env: NodeJS.ProcessEnv = process.env): string {
  return join(stateDir(env), `check-${repoId}.json`);
}

const NAME_RE = /^[0-9a-f]{32}$/;

/**
 * The cursors of repository `repoId`: empty when there is no state file. A state file that cannot
 * be parsed is reported through `warn` and treated as absent (the rotation starts over).
 */
export async function readCheckCursors(
  path: string,
  repoId: string,
  warn: (m: string) => void,
): Promise<Record<string, CheckCursor>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    warn(`cannot read ${path} (${(err as Error).message}): the rotation starts at the first pack`);
    return {};
  }
  try {
    const v = JSON.parse(text) as Partial<StateFile>;
    if (v.version !== 1 || v.repository !== repoId || typeof v.cursors !== 'object' || v.cursors === null)
      throw new Error('not a check state file of this repository');
    const out: Record<string, CheckCursor> = {};
    for (const [k, c] of Object.entries(v.cursors))
      if (typeof c?.lastPack === 'string' && NAME_RE.test(c.lastPack))
        out[k] = { lastPack: c.lastPack, time: typeof c.time === 'string' ? c.time : '' };
    return out;
  } catch (err) {
    warn(`${path} is damaged (${(err as Error).message}): the rotation starts at the first pack`);
    return {};
  }
}

/** Writes `cursor` for `selection`, keeping the others (temporary file, then rename). */
export async function writeCheckCursor(
  path: string,
  repoId: string,
  selection: string,
  cursor: CheckCursor,
): Promise<void> {
  const cursors = await readCheckCursors(path, repoId, () => {});
  cursors[selection] = cursor;
  const state: StateFile = { version: 1, repository: repoId, cursors };
  const tmp = `${path}.${process.pid}.tmp`;
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, path);
}
