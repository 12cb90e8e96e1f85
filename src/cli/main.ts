import { Command, CommanderError } from 'commander';
import {
  ExitCode,
  isVmvaultError,
  isSafeVmName,
  CancelledError,
  printable,
  UsageError,
} from '../util/index.js';
import { VERSION } from '../backup/index.js';
import { backupImageCommand } from './commands/backup-image.js';
import { benchmarkCommand } from './commands/benchmark.js';
import { backupCommand } from './commands/backup.js';
import { checkCommand } from './commands/check.js';
import { noteCommand, protectCommand, tagCommand, unprotectCommand } from './commands/edit.js';
import { filesCommand, mountCommand } from './commands/files.js';
import { forgetCommand } from './commands/forget.js';
import { pruneCommand } from './commands/prune.js';
import { syncCommand } from './commands/sync.js';
import { locksCommand, unlockCommand } from './commands/locks.js';
import { initCommand } from './commands/init.js';
import { keyCommand } from './commands/key.js';
import { restoreCommand } from './commands/restore.js';
import { serveCommand } from './commands/serve.js';
import { showCommand } from './commands/show.js';
import { snapshotsCommand } from './commands/snapshots.js';
import { statsCommand } from './commands/stats.js';
import { uiCommand } from './commands/ui.js';
import { installSignalHandlers, isInterruptNormalEnd, rootAbort } from './signals.js';
import { beginRun, finishRun } from './after-run.js';
import { recordError } from './events.js';
import {
  globals,
  positiveInt,
  type GlobalOptions,
  setCommandName,
  setGlobalPasswordFile,
  setGlobalS3Options,
} from './context.js';

const EXIT_CODES_HELP = `
Exit codes: 0 success, 1 failure, 2 usage error, 3 partial success, 10 repository not found,
11 repository locked, 12 wrong or missing password, 20 integrity problem, 130/143 cancelled (SIGINT/SIGTERM). See docs/cli.md.`;

export function buildProgram(): Command {
  const program = new Command('vmvault')
    .description('deduplicating backups of libvirt/KVM virtual machines')
    .version(VERSION, '-V, --version')
    .option('--debug', 'print stack traces and debug logging')
    .option('-q, --quiet', 'no progress or log lines')
    .option('--password-file <file>', 'password of an encrypted repository: the first line of FILE')
    .option(
      '--s3-connections <n>',
      'S3 requests in flight at once (default 16)',
      positiveInt('--s3-connections', 1024),
    )
    .option(
      '--limit-upload <KiB/s>',
      'limit uploads to S3 to this rate',
      positiveInt('--limit-upload', 2 ** 30),
    )
    .option(
      '--limit-download <KiB/s>',
      'limit downloads from S3 to this rate',
      positiveInt('--limit-download', 2 ** 30),
    )
    .option(
      '--log-file <file>',
      'append one timestamped line per event (progress, warnings, the end) to FILE',
    )
    .option('--json-progress', 'with --json: progress events as JSON lines on stderr')
    .option(
      '--notify-command <cmd>',
      'after the command, run CMD (sh -c) with its JSON summary on stdin and VMVAULT_OUTCOME etc. set',
    )
    .option(
      '--notify-timeout <seconds>',
      'stop the notify command after this long (default 60)',
      positiveInt('--notify-timeout', 86400),
    )
    .option('--metrics-file <file>', 'write Prometheus metrics of the run to FILE (textfile collector)')
    .addHelpText('after', EXIT_CODES_HELP)
    // openRepo has no command object: hand it the global options before each action.
    .hook('preAction', (_program, action) => {
      const g = globals(action);
      setGlobalPasswordFile(g.passwordFile);
      const name =
        action.parent && action.parent !== _program
          ? `${action.parent.name()} ${action.name()}`
          : action.name();
      setCommandName(name);
      startRunReports(name, action, g);
      setGlobalS3Options({
        ...(g.s3Connections === undefined ? {} : { s3Connections: g.s3Connections }),
        ...(g.limitUpload === undefined ? {} : { limitUploadKiBs: g.limitUpload }),
        ...(g.limitDownload === undefined ? {} : { limitDownloadKiBs: g.limitDownload }),
      });
    });
  for (const cmd of [
    initCommand(),
    backupCommand(),
    backupImageCommand(),
    snapshotsCommand(),
    showCommand(),
    statsCommand(),
    restoreCommand(),
    serveCommand(),
    uiCommand(),
    filesCommand(),
    mountCommand(),
    checkCommand(),
    forgetCommand(),
    pruneCommand(),
    syncCommand(),
    protectCommand(),
    unprotectCommand(),
    tagCommand(),
    noteCommand(),
    locksCommand(),
    unlockCommand(),
    keyCommand(),
    benchmarkCommand(),
  ]) {
    cmd.addHelpText('after', EXIT_CODES_HELP);
    program.addCommand(cmd);
  }
  // Commander's own errors (unknown option, missing argument, bad choice, ...) take the one error
  // path: nothing printed by commander, a UsageError naming the command's --help; help and version
  // output end as before (a CommanderError that report() turns into their exit code).
  const override = (c: Command): void => {
    c.configureOutput({ outputError: () => undefined });
    c.exitOverride((err) => {
      if (HELP_CODES.has(err.code)) throw err;
      throw usageErrorFrom(err, c === program ? 'vmvault' : `vmvault ${c.name()}`);
    });
    c.commands.forEach(override);
  };
  override(program);
  return program;
}

/**
 * The run's reports (after-run.ts): the log file opens now, the metrics and the notify command
 * come after the exit code. Backups name their VMs (-d, --vm) so that a failed run still has
 * series per VM.
 */
function startRunReports(name: string, action: Command, g: GlobalOptions): void {
  const a = action.opts<{
    json?: boolean;
    repo?: string;
    vm?: unknown;
    domain?: unknown;
    estimate?: boolean;
    dryRun?: boolean;
  }>();
  if (g.jsonProgress && a.json !== true)
    throw new UsageError('--json-progress needs --json', `add --json ('vmvault ${name} --json ...')`);
  // Only names the command accepts become labels: an invalid one ends the run as a usage error.
  const vms = (
    name === 'backup-image' && typeof a.vm === 'string'
      ? [a.vm]
      : name === 'backup' && Array.isArray(a.domain)
        ? a.domain.filter((d): d is string => typeof d === 'string')
        : []
  ).filter(isSafeVmName);
  try {
    beginRun({
      command: name,
      ...(typeof a.repo === 'string' && a.repo !== '' ? { repo: a.repo } : {}),
      vms,
      // A run that measures nothing leaves the metrics as they are.
      measured: a.estimate !== true && a.dryRun !== true,
      options: {
        ...(g.logFile === undefined ? {} : { logFile: g.logFile }),
        ...(g.jsonProgress ? { jsonProgress: true } : {}),
        ...(g.notifyCommand === undefined ? {} : { notifyCommand: g.notifyCommand }),
        ...(g.notifyTimeout === undefined ? {} : { notifyTimeout: g.notifyTimeout }),
        ...(g.metricsFile === undefined ? {} : { metricsFile: g.metricsFile }),
      },
    });
  } catch (err) {
    throw new UsageError(
      `cannot open the log file ${printable(g.logFile ?? '', 200)}: ${(err as Error).message}`,
      'give --log-file a file in a directory that exists and that vmvault may write',
    );
  }
}

const HELP_CODES = new Set(['commander.helpDisplayed', 'commander.version', 'commander.help']);

/**
 * `error: unknown option '--x'\n(Did you mean --y?)` → UsageError "unknown option '--x' (Did you
 * mean --y?); run 'vmvault restore --help'".
 */
function usageErrorFrom(err: CommanderError, commandLine: string): UsageError {
  const cause = err.message
    .replace(/^error: /, '')
    .replace(/\s*\n\s*/g, ' ')
    .trim()
    .replace(/\.$/, '');
  // The text quotes the command line: control characters are shown escaped, not sent to the terminal.
  return new UsageError(printable(cause, 400), `run '${commandLine} --help'`);
}

/**
 * A reader that goes away (`vmvault snapshots | head`) is a normal end, not a crash: stop quietly,
 * as other command-line tools do, instead of an EPIPE stack trace.
 */
function endQuietlyOnClosedPipes(): void {
  for (const stream of [process.stdout, process.stderr])
    stream.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') process.exit(process.exitCode ?? 0);
      throw err;
    });
}

export async function main(argv: string[]): Promise<void> {
  endQuietlyOnClosedPipes();
  installSignalHandlers();
  const debug = argv.includes('--debug');
  const json = argv.includes('--json');
  const program = buildProgram();
  let code: number = ExitCode.OK;
  try {
    await program.parseAsync(argv);
  } catch (err) {
    code = report(err, debug, json);
  }
  if (code === ExitCode.OK && rootAbort.signal.aborted && !isInterruptNormalEnd())
    code = report(rootAbort.signal.reason, debug, json);
  process.exitCode = code;
  // Metrics and the notify command: after the exit code is known, never changing it.
  await finishRun(code);
}

/** The single place that turns errors into one line on stderr and an exit code. */
function report(err: unknown, debug: boolean, json: boolean): number {
  // Help and version (printed by commander); any other commander error became a UsageError.
  if (err instanceof CommanderError && HELP_CODES.has(err.code)) return ExitCode.OK;
  let code: number;
  let message: string;
  let errCode: string;
  if (isVmvaultError(err)) {
    code = err.exitCode;
    errCode = err.code;
    message = err.oneLine();
  } else {
    code = ExitCode.FAILURE;
    errCode = 'INTERNAL';
    message = `internal error: ${err instanceof Error ? err.message : String(err)} (run with --debug for details)`;
  }
  if (err instanceof CancelledError) message = err.message;
  process.stderr.write(`vmvault: ${message}\n`);
  recordError({ message_type: 'exit_error', code: errCode, exit_code: code, message });
  if (debug && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  if (debug && err instanceof Error && err.cause instanceof Error && err.cause.stack)
    process.stderr.write(`caused by: ${err.cause.stack}\n`);
  if (json) {
    // Messages name objects by short ids; the error's details carry the full ones.
    const details = isVmvaultError(err) && Object.keys(err.details).length ? err.details : undefined;
    process.stderr.write(
      `${JSON.stringify({ message_type: 'exit_error', code: errCode, exit_code: code, message, ...(details ? { details } : {}) })}\n`,
    );
  }
  return code;
}
