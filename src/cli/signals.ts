import { CancelledError } from '../util/index.js';

/** One root AbortController wired to SIGINT / SIGTERM. A second signal exits at once. */
export const rootAbort = new AbortController();
let installed = false;

export function installSignalHandlers(): void {
  if (installed) return;
  installed = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      if (rootAbort.signal.aborted) process.exit(sig === 'SIGINT' ? 130 : 143);
      rootAbort.abort(new CancelledError(sig));
    });
  }
}
