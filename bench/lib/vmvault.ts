/** Running the vmvault CLI of one build (this checkout's or a baseline's) against a repository. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { sh } from './harness.js';

/** The password encrypted repositories get in the benches (`VMVAULT_PASSWORD`). */
export const BENCH_PASSWORD = 'vmvault-bench-password';

/** This checkout's build: bin/vmvault, with `npm run build` done. */
export async function currentBuild(): Promise<{ bin: string; commit: string }> {
  const bin = join(process.cwd(), 'bin/vmvault');
  if (!existsSync(join(process.cwd(), 'dist/cli/main.js')))
    throw new Error('this checkout is not built: run `npm run build` first');
  const head = (await sh('git rev-parse --short HEAD')).trim();
  const dirty = (await sh('git status --porcelain --untracked-files=no -- src')).trim() ? '+changes' : '';
  return { bin, commit: head + dirty };
}

/** Options of `vmvault init` that only format 2 has, as the build's help lists them. */
export async function initOptions(
  bin: string,
): Promise<{ packSize: boolean; encryption: boolean; keyCache: boolean }> {
  const help = await sh(`'${bin}' init --help 2>&1 || true`);
  // VMVAULT_KEY_CACHE is an environment variable, not an option: look for it in the build.
  const ctx = join(dirname(bin), '..', 'dist', 'cli', 'context.js');
  const keyCache = existsSync(ctx) && readFileSync(ctx, 'utf8').includes('VMVAULT_KEY_CACHE');
  return { packSize: /--pack-size\b/.test(help), encryption: /--encryption\b/.test(help), keyCache };
}

/**
 * Repository statistics from `vmvault stats --json` (undefined when a field is not there): the
 * distinct chunks the snapshots reference are what "one object per chunk" would store.
 */
export async function chunksReferenced(
  bin: string,
  repo: string,
  env: NodeJS.ProcessEnv,
): Promise<number | undefined> {
  const envs = Object.entries(env)
    .map(([k, v]) => `${k}='${v}'`)
    .join(' ');
  try {
    const st = JSON.parse(await sh(`${envs} '${bin}' stats --json -r '${repo}'`)) as Record<string, unknown>;
    const n = st.chunksReferenced ?? st.chunksStored;
    return typeof n === 'number' ? n : undefined;
  } catch {
    return undefined;
  }
}
