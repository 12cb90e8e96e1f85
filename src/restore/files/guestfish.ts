import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { CancelledError, VmvaultError, errnoCode, printable } from '../../util/index.js';

/** What `files` and `mount` say when libguestfs is not installed (docs/restore.md). */
export const GUESTFISH_MISSING = 'guestfish not found';
const INSTALL_HINT = 'install libguestfs-tools (apt install libguestfs-tools)';

/** A failure inside the libguestfs appliance, as one line (the `libguestfs: error:` text). */
export class GuestfishError extends VmvaultError {
  constructor(message: string, hint?: string) {
    super('GUESTFISH', message, { hint });
  }
}

/** A drive of the appliance: one NBD export on a unix socket, read-only. */
export interface GuestDrive {
  socket: string;
  exportName: string;
}

/** Most stdout bytes one command may print (stat lines, realpath); file data never goes there. */
const MAX_OUTPUT_BYTES = 64 * 1024 * 1024;
/** The stderr tail kept for the error message. */
const MAX_STDERR_BYTES = 64 * 1024;

/**
 * A guestfish argument: double-quoted, every byte outside a small safe set as `\xHH`, so names
 * read from a guest filesystem (spaces, quotes, newlines, any byte) reach libguestfs unchanged.
 */
export function gfQuote(value: string | Buffer): string {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  let out = '"';
  for (const b of bytes) {
    const c = String.fromCharCode(b);
    out += /[A-Za-z0-9/._+,:=@-]/.test(c) ? c : `\\x${b.toString(16).padStart(2, '0')}`;
  }
  return `${out}"`;
}

interface Pending {
  resolve: (out: string) => void;
  reject: (err: Error) => void;
}

/**
 * One guestfish process, fed commands on stdin (the appliance starts once, at `run`). Each command
 * is followed by `echo <marker>` with a random marker, so the output of every command is the
 * stdout text before its marker line. guestfish stops at the first failing command: every
 * command still waiting then fails with its `libguestfs: error:` line. Closing stdin (or the
 * death of this process) makes guestfish shut the appliance down and exit.
 */
export class Guestfish {
  private readonly marker = `vmvault-${randomBytes(16).toString('hex')}`;
  private readonly pending: Pending[] = [];
  private out = '';
  private err = '';
  private exitError: Error | undefined;
  private readonly exited: Promise<void>;
  private killedBy: Error | undefined;

  private constructor(private readonly child: ChildProcess) {
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => this.onOut(d));
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      this.err = (this.err + d).slice(-MAX_STDERR_BYTES);
    });
    child.stdin!.on('error', () => undefined); // a dead guestfish: reported by 'close'
    this.exited = new Promise((resolve) => {
      child.on('error', (e) => {
        this.fail(
          errnoCode(e) === 'ENOENT'
            ? new VmvaultError('GUESTFISH_MISSING', GUESTFISH_MISSING, { hint: INSTALL_HINT })
            : new GuestfishError(`cannot start guestfish: ${e.message}`),
        );
        resolve();
      });
      child.on('close', (code, sig) => {
        this.fail(this.killedBy ?? this.errorFromStderr(code, sig));
        resolve();
      });
    });
  }

  /** Starts guestfish read-only with the drives added (the appliance is not launched yet). */
  static start(drives: readonly GuestDrive[]): Guestfish {
    const child = spawn('guestfish', ['--ro', '--no-progress-bars'], {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: process.env,
    });
    const gf = new Guestfish(child);
    for (const d of drives)
      gf.send(
        `add ${gfQuote(d.exportName)} protocol:nbd ${gfQuote(`server:unix:${d.socket}`)} format:raw readonly:true`,
      );
    return gf;
  }

  private send(line: string): void {
    if (!this.exitError) this.child.stdin!.write(`${line}\n`);
  }

  private onOut(d: string): void {
    this.out += d;
    if (this.out.length > MAX_OUTPUT_BYTES) {
      this.kill(new GuestfishError('guestfish printed more than 64 MiB for one command'));
      return;
    }
    const tag = `${this.marker}\n`;
    for (;;) {
      const at = this.out.startsWith(tag) ? 0 : this.out.indexOf(`\n${tag}`);
      if (at < 0) return;
      const end = at === 0 ? 0 : at + 1;
      const text = this.out.slice(0, end);
      this.out = this.out.slice(end + tag.length);
      this.pending.shift()?.resolve(text);
    }
  }

  private errorFromStderr(code: number | null, sig: NodeJS.Signals | null): Error {
    const lines = this.err.split('\n').filter((l) => l.trim() !== '');
    const errLine = lines.find((l) => l.includes('libguestfs: error: '));
    const text = errLine
      ? errLine.slice(errLine.indexOf('libguestfs: error: ') + 'libguestfs: error: '.length)
      : (lines[lines.length - 1] ?? `guestfish ended (${sig ?? `exit ${code}`})`);
    return new GuestfishError(
      `libguestfs: ${printable(text, 400)}`,
      /launch|appliance|kernel|qemu|supermin|KVM/i.test(text)
        ? 'run libguestfs-test-tool to see why the appliance does not start (LIBGUESTFS_BACKEND=direct may help)'
        : undefined,
    );
  }

  private fail(err: Error): void {
    if (!this.exitError) this.exitError = err;
    for (const p of this.pending.splice(0)) p.reject(this.exitError);
  }

  /**
   * Runs commands in order and returns each one's stdout. A command is a guestfish line; its
   * arguments must be quoted with gfQuote. A `-` prefix makes guestfish go on when it fails.
   */
  runEach(commands: readonly string[]): Promise<string[]> {
    return Promise.all(
      commands.map(
        (c) =>
          new Promise<string>((resolve, reject) => {
            if (this.exitError) return reject(this.exitError);
            this.pending.push({ resolve, reject });
            this.send(c);
            this.send(`echo ${this.marker}`);
          }),
      ),
    );
  }

  async run(command: string): Promise<string> {
    return (await this.runEach([command]))[0]!;
  }

  /** Ends guestfish now (SIGTERM, SIGKILL if it lingers): waiting commands fail with `reason`. */
  kill(reason: Error = new CancelledError()): void {
    this.killedBy ??= reason;
    this.fail(reason);
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.child.kill('SIGTERM');
      const t = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      t.unref();
      void this.exited.then(() => clearTimeout(t));
    }
  }

  /** Lets guestfish shut the appliance down and exit (stdin closed); kills it after `graceMs`. */
  async close(graceMs = 20_000): Promise<void> {
    if (!this.exitError) this.exitError = new GuestfishError('guestfish was closed');
    this.child.stdin!.end();
    const t = setTimeout(() => this.kill(), graceMs);
    await this.exited;
    clearTimeout(t);
  }
}
