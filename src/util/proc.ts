import { errnoCode } from './errors.js';

/**
 * Whether a process with this pid exists. Only ESRCH means it is gone; any other error from
 * `kill(pid, 0)` (EPERM: it runs as another user) counts as alive, so a caller never treats a
 * live process's files as stale.
 */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) !== 'ESRCH';
  }
}
