/** A progress sink. Libraries report bytes; the CLI renders a TTY bar or log lines. */
export interface Progress {
  /** Start a task of `totalBytes` (0 if unknown) named `label`. */
  start(label: string, totalBytes: number): void;
  /**
   * `bytes` more of the task are done (position in the disk: holes and unchanged ranges count as
   * done without being read), of which `readBytes` were really read from the source (default:
   * all of them). Rates are computed from the bytes read, never from the position.
   */
  advance(bytes: number, readBytes?: number): void;
  /** The task is finished. */
  done(): void;
}

export const nullProgress: Progress = { start() {}, advance() {}, done() {} };
