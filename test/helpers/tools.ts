import { execFileSync } from 'node:child_process';

/**
 * Whether an external tool exists. Tests call `requireTools([...])` at the top of a suite:
 * locally a missing tool skips the suite with the reason printed; with VMVAULT_TEST_STRICT=1
 * (CI) it is a failure, never a skip.
 */
export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name} || test -x /usr/sbin/${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

export function missingTools(names: readonly string[]): string[] {
  return names.filter((n) => !hasTool(n));
}

/** Returns true when the suite may run. Throws in strict mode when something is missing. */
export function requireTools(names: readonly string[]): boolean {
  const missing = missingTools(names);
  if (missing.length === 0) return true;
  const msg = `missing tools: ${missing.join(', ')} (run scripts/setup.sh --tests as root)`;
  if (process.env.VMVAULT_TEST_STRICT === '1') throw new Error(msg);
  console.warn(`skipping: ${msg}`);
  return false;
}

export const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
