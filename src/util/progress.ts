/** A progress sink. Libraries report bytes; the CLI renders a TTY bar or log lines. */
export interface Progress {
  /** Start a task of `totalBytes` (0 if unknown) named `label`. */
  start(label: string, totalBytes: number): void;
  /** `bytes` more are done. */
  advance(bytes: number): void;
  /** The task is finished. */
  done(): void;
}

export const nullProgress: Progress = { start() {}, advance() {}, done() {} };
