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

let interruptEndsNormally = false;

/** For commands that run until interrupted (serve): SIGINT/SIGTERM is their normal end, exit 0. */
export function interruptIsNormalEnd(): void {
  interruptEndsNormally = true;
}

export function isInterruptNormalEnd(): boolean {
  return interruptEndsNormally;
}

/** Resolves at the first SIGINT/SIGTERM (at once when one came already): the end of `serve`, `ui`, `mount`. */
export function untilInterrupted(): Promise<void> {
  return new Promise<void>((resolve) => {
    if (rootAbort.signal.aborted) resolve();
    rootAbort.signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
