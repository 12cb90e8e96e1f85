import { readFile, stat } from 'node:fs/promises';
import { Command } from 'commander';
import { UsageError, errnoCode, errorMessage, printable } from '../../util/index.js';
import { DashboardSource, UiServer, isLoopbackHost } from '../../ui/index.js';
import { commaList, openBackendFor, openRepo, repoOption } from '../context.js';
import { interruptIsNormalEnd, untilInterrupted } from '../signals.js';
import { parseListen } from './serve.js';

interface UiFlags {
  listen: string;
  tokenFile?: string;
  tlsCert?: string;
  tlsKey?: string;
  allowHost?: string[];
  repo?: string;
}

/** How long one read of the repository answers every request (a reload storm reads once). */
const DASHBOARD_MAX_AGE_MS = 5_000;

const TOKEN_HINT = "e.g. 'openssl rand -hex 32 > FILE; chmod 600 FILE'";

/**
 * The token: the first line of FILE, 16 to 1024 visible ASCII characters. A file that other users
 * may read or anyone but its owner may write is refused (docs/ui.md "Security").
 */
async function readTokenFile(file: string): Promise<string> {
  const name = printable(file, 200);
  let text: string;
  let mode: number;
  try {
    mode = (await stat(file)).mode;
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new UsageError(
      `cannot read the token file ${name}: ${errnoCode(err) ?? errorMessage(err)}`,
      `give --token-file a readable file holding the token, ${TOKEN_HINT}`,
    );
  }
  if ((mode & 0o022) !== 0 || (mode & 0o004) !== 0)
    throw new UsageError(
      `the token file ${name} can be ${(mode & 0o004) !== 0 ? 'read' : 'written'} by other users (mode ${(mode & 0o777).toString(8).padStart(4, '0')})`,
      `run 'chmod 600 ${name}'`,
    );
  const token = (text.split('\n')[0] ?? '').trim();
  if (!/^[\x21-\x7e]{16,1024}$/.test(token))
    throw new UsageError(
      `the token in ${name} must be 16 to 1024 visible ASCII characters without spaces on its first line`,
      TOKEN_HINT,
    );
  return token;
}

async function readTlsFile(file: string, what: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw new UsageError(
      `cannot read the ${what} ${printable(file, 200)}: ${errnoCode(err) ?? errorMessage(err)}`,
      `give --tls-cert and --tls-key PEM files vmvault may read`,
    );
  }
}

export function uiCommand(): Command {
  return new Command('ui')
    .description(
      'serve a read-only web dashboard of the repository: snapshots, sizes, growth, sessions, locks, the last check',
    )
    .option('--listen <host:port>', 'address to listen on (port 0: any free port)', '127.0.0.1:8080')
    .option(
      '--token-file <file>',
      "require the token on FILE's first line with every request (needed to listen beyond loopback)",
    )
    .option('--tls-cert <file>', 'serve HTTPS with this certificate (PEM; with --tls-key)')
    .option('--tls-key <file>', "the certificate's private key (PEM)")
    .option(
      '--allow-host <name>',
      'also answer requests addressed to this host name (repeatable or comma separated)',
      commaList,
    )
    .addOption(repoOption())
    .action(async (opts: UiFlags) => {
      const listen = parseListen(opts.listen);
      if ((opts.tlsCert === undefined) !== (opts.tlsKey === undefined))
        throw new UsageError('--tls-cert and --tls-key go together', 'give both, or neither');
      const token = opts.tokenFile === undefined ? undefined : await readTokenFile(opts.tokenFile);
      if (token === undefined && !isLoopbackHost(listen.host))
        throw new UsageError(
          `listening on ${printable(opts.listen, 80)} (beyond loopback) needs a token`,
          `give --token-file FILE (${TOKEN_HINT}), or listen on 127.0.0.1`,
        );
      const tls =
        opts.tlsCert !== undefined && opts.tlsKey !== undefined
          ? {
              cert: await readTlsFile(opts.tlsCert, 'certificate'),
              key: await readTlsFile(opts.tlsKey, 'key'),
            }
          : undefined;
      // The password of an encrypted repository is asked for once, here.
      const repo = await openRepo(opts, 'read');
      const location = opts.repo!;
      let server: UiServer | undefined;
      try {
        const source = new DashboardSource(repo, {
          maxAgeMs: DASHBOARD_MAX_AGE_MS,
          // Each read holds a session of its own (docs/gc.md), when the storage can be written.
          sessionVia: () => openBackendFor(location, 'write'),
        });
        try {
          server = await UiServer.start({
            source,
            host: listen.host,
            port: listen.port,
            ...(token === undefined ? {} : { token }),
            ...(tls ? { tls } : {}),
            ...(opts.allowHost ? { allowedHosts: opts.allowHost } : {}),
          });
        } catch (err) {
          const code = errnoCode(err);
          if (code === 'EADDRINUSE' || code === 'EADDRNOTAVAIL' || code === 'EACCES')
            throw new UsageError(
              `cannot listen on ${printable(opts.listen, 80)}: ${code}`,
              'choose another --listen address or port',
            );
          if (tls && /PEM|key|cert|asn1|routines/i.test(errorMessage(err)))
            throw new UsageError(
              `cannot use --tls-cert/--tls-key: ${printable(errorMessage(err), 200)}`,
              'give a PEM certificate and its matching private key',
            );
          throw err;
        }
        interruptIsNormalEnd();
        process.stderr.write(
          [
            `dashboard of ${printable(location, 200)} (read-only) at ${server.url}`,
            ...(token === undefined
              ? []
              : [
                  `open ${server.url}?token=TOKEN once (TOKEN: the first line of ${printable(opts.tokenFile!, 200)}), or send 'Authorization: Bearer TOKEN'`,
                ]),
            'press Ctrl-C to stop',
            '',
          ].join('\n'),
        );
        await untilInterrupted();
        process.exitCode = 0;
      } finally {
        await server?.close().catch(() => undefined);
        await repo.close().catch(() => undefined);
      }
    });
}
