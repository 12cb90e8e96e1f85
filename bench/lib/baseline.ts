import { existsSync, lstatSync, realpathSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { CACHE } from './datasets.js';
import { sh } from './harness.js';

/** The last format 1 commit: the baseline format 2 is measured against (issue 11). */
export const FORMAT1_COMMIT = 'bf4e56e';

/**
 * A build of commit `rev` in its own detached git worktree at `bench/.cache/<name>` (node_modules
 * a symlink to this checkout's), made once and reused while it sits at that commit and is built.
 * Returns the path of its `bin/vmvault`.
 */
export async function baselineBuild(
  rev = FORMAT1_COMMIT,
  name = 'format1',
): Promise<{ bin: string; commit: string }> {
  const dir = join(CACHE, name);
  const commit = (await sh(`git rev-parse --verify '${rev}^{commit}'`)).trim();
  const bin = join(dir, 'bin/vmvault');
  const built = (): boolean => existsSync(join(dir, 'dist/cli/main.js'));
  const at = async (): Promise<string> =>
    (await sh(`git -C '${dir}' rev-parse HEAD 2>/dev/null || true`)).trim();
  if (existsSync(join(dir, '.git')) && (await at()) === commit && built()) return { bin, commit };
  console.log(`building the baseline ${commit.slice(0, 7)} in ${dir} (once) …`);
  if (!existsSync(join(dir, '.git'))) {
    // --force: also when a folder deleted by hand left its worktree registration behind.
    await sh(`git worktree add --force --detach '${dir}' ${commit} >/dev/null`);
  } else if ((await at()) !== commit) {
    await sh(`git -C '${dir}' checkout -q --detach ${commit} && rm -rf '${dir}/dist'`);
  }
  const modules = join(dir, 'node_modules');
  if (!existsSync(modules) && !isSymlink(modules)) symlinkSync(realpathSync('node_modules'), modules);
  await sh(`cd '${dir}' && npm run -s build >/dev/null`);
  if (!built()) throw new Error(`the baseline build in ${dir} produced no dist/cli/main.js`);
  return { bin, commit };
}

function isSymlink(p: string): boolean {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
}
