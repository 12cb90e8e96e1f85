/** Leveled logger interface. Libraries receive a Logger; only the CLI decides where it goes. */
export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warn(msg: string): void;
}

export const nullLogger: Logger = { debug() {}, info() {}, warn() {} };

export function stderrLogger(opts: { debug?: boolean; quiet?: boolean } = {}): Logger {
  return {
    debug: (m) => {
      if (opts.debug) process.stderr.write(`debug: ${m}\n`);
    },
    info: (m) => {
      if (!opts.quiet) process.stderr.write(`${m}\n`);
    },
    warn: (m) => process.stderr.write(`warning: ${m}\n`),
  };
}
