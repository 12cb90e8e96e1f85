import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { ExitCode, errorMessage, printable, VmvaultError } from '../util/index.js';

/**
 * Where the password of an encrypted repository comes from (docs/cli.md "Passwords"), in order:
 * VMVAULT_PASSWORD, VMVAULT_PASSWORD_FILE or --password-file (first line), VMVAULT_PASSWORD_COMMAND
 * (sh -c, first line of stdout), else a prompt without echo on a TTY.
 */
export class PasswordError extends VmvaultError {
  constructor(message: string, hint: string) {
    super('PASSWORD', message, { hint, exitCode: ExitCode.WRONG_KEY });
  }
}

function firstLine(text: string): string {
  const nl = text.indexOf('\n');
  const line = nl < 0 ? text : text.slice(0, nl);
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}

export interface PasswordSourceOptions {
  passwordFile?: string | undefined;
  /** Ask twice and require both to match (init, key add, key passwd). */
  confirm?: boolean;
  /** The prompt's text. */
  prompt?: string;
  env?: NodeJS.ProcessEnv;
  /**
   * Whose password, for the other repository of a two-repository command: its variables are
   * `<prefix>PASSWORD`, `<prefix>PASSWORD_FILE`, `<prefix>PASSWORD_COMMAND` and its file option
   * `fileFlag` (default: VMVAULT_ and --password-file, the repository of -r).
   */
  names?: { prefix: string; fileFlag: string; which: string };
}

/**
 * The password of the other repository of a two-repository command (`sync --to`: `VMVAULT_TO_…`
 * and `--to-password-file`; `init --from-repo`: `VMVAULT_FROM_…` and `--from-password-file`).
 */
export function readOtherPassword(
  prefix: 'VMVAULT_TO_' | 'VMVAULT_FROM_',
  opts: { passwordFile?: string | undefined; prompt: string },
): Promise<string> {
  const to = prefix === 'VMVAULT_TO_';
  return readPassword({
    passwordFile: opts.passwordFile,
    prompt: opts.prompt,
    names: {
      prefix,
      fileFlag: to ? '--to-password-file' : '--from-password-file',
      which: to ? 'the destination repository' : 'the source repository',
    },
  });
}

/** Reads the password from the first source that is set. */
export async function readPassword(opts: PasswordSourceOptions = {}): Promise<string> {
  const env = opts.env ?? process.env;
  const { prefix, fileFlag, which } = opts.names ?? {
    prefix: 'VMVAULT_',
    fileFlag: '--password-file',
    which: '',
  };
  const password = env[`${prefix}PASSWORD`];
  if (password !== undefined && password !== '') return password;
  const file = opts.passwordFile ?? (env[`${prefix}PASSWORD_FILE`] || undefined);
  if (file !== undefined) {
    try {
      return firstLine(await readFile(file, 'utf8'));
    } catch (err) {
      throw new PasswordError(
        `cannot read the password file ${printable(file, 200)}: ${errorMessage(err)}`,
        `check the path given by ${fileFlag} or ${prefix}PASSWORD_FILE`,
      );
    }
  }
  const command = env[`${prefix}PASSWORD_COMMAND`];
  if (command !== undefined && command !== '')
    return runPasswordCommand(command, `${prefix}PASSWORD_COMMAND`);
  if (process.stdin.isTTY && process.stderr.isTTY) {
    const pw = await prompt(opts.prompt ?? 'password: ');
    if (opts.confirm) {
      const again = await prompt('password again: ');
      if (again !== pw)
        throw new PasswordError(
          'the two passwords differ',
          'run the command again and type the same password twice',
        );
    }
    return pw;
  }
  throw new PasswordError(
    `no password given${which ? ` for ${which}` : ''} and no terminal to ask on`,
    `set ${prefix}PASSWORD, ${prefix}PASSWORD_FILE, ${fileFlag} or ${prefix}PASSWORD_COMMAND`,
  );
}

function runPasswordCommand(command: string, name: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('sh', ['-c', command], { maxBuffer: 64 * 1024, timeout: 120_000 }, (err, stdout, stderr) => {
      if (err) {
        const why = printable(firstLine(String(stderr)).trim() || errorMessage(err), 200);
        reject(
          new PasswordError(
            `${name} failed: ${why}`,
            'fix the command (it must print the password on its first line and exit 0)',
          ),
        );
      } else resolve(firstLine(String(stdout)));
    });
  });
}

/** Reads one line from the TTY without echo. */
function prompt(text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const stdin = process.stdin;
    process.stderr.write(text);
    stdin.setRawMode(true);
    stdin.resume();
    stdin.setEncoding('utf8');
    let buf = '';
    const done = (err?: Error): void => {
      stdin.setRawMode(false);
      stdin.pause();
      stdin.removeListener('data', onData);
      process.stderr.write('\n');
      if (err) reject(err);
      else resolve(buf);
    };
    const onData = (chunk: string): void => {
      for (const ch of chunk) {
        if (ch === '\r' || ch === '\n') return done();
        if (ch === '\u0003')
          return done(new PasswordError('cancelled at the password prompt', 'run the command again'));
        if (ch === '\u007f' || ch === '\b') buf = buf.slice(0, -1);
        else buf += ch;
      }
    };
    stdin.on('data', onData);
  });
}
