import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { formatBytes, parseSize, UsageError } from '../../util/index.js';
import { Repository, parseCompression } from '../../repo/index.js';
import { globals, openBackendFor, openRepo, printJson, testKdf } from '../context.js';
import { readOtherPassword, readPassword } from '../password.js';

export function initCommand(): Command {
  return new Command('init')
    .description('create a new repository')
    .argument('[repo]', 'repository location (a directory); defaults to -r / VMVAULT_REPO')
    .addOption(new Option('-r, --repo <repo>', 'repository location').env('VMVAULT_REPO'))
    .option('--chunk-size <size>', 'chunk size, a power of two from 64K to 16M', '1M')
    .option('--pack-size <size>', 'pack target size, a power of two from 4M to 64M', '16M')
    .option('--compression <codec>', 'zstd, zstd:LEVEL (1-19; -7 to -1: faster, larger) or none', 'zstd:1')
    .addOption(
      new Option('--encryption <mode>', 'aes-256-gcm (password from VMVAULT_PASSWORD, ...) or none')
        .choices(['aes-256-gcm', 'none'])
        .default('none'),
    )
    .option('--password-file <file>', 'the password: the first line of FILE')
    .option(
      '--from-repo <repo>',
      'a repository to sync from: same chunk size, pack size, compression and (encrypted) the same keys, so chunks copy as they are',
    )
    .option(
      '--from-password-file <file>',
      "the source's password: the first line of FILE (also VMVAULT_FROM_PASSWORD…)",
    )
    .option(
      '--object-lock-days <days>',
      'S3 only: write every object with an Object Lock retention of DAYS; prune keeps live data retained (docs/s3.md)',
    )
    .addOption(
      new Option(
        '--object-lock-mode <mode>',
        'governance (an admin with bypass rights may delete) or compliance (nobody may)',
      )
        .choices(['governance', 'compliance'])
        .default('governance'),
    )
    .option('--json', 'print the result as JSON')
    .action(
      async (
        repoArg: string | undefined,
        opts: {
          repo?: string;
          chunkSize: string;
          packSize: string;
          compression: string;
          encryption: 'aes-256-gcm' | 'none';
          passwordFile?: string;
          objectLockDays?: string;
          fromRepo?: string;
          fromPasswordFile?: string;
          objectLockMode: 'governance' | 'compliance';
          json?: boolean;
        },
        cmd: Command,
      ) => {
        const location = repoArg ?? opts.repo;
        if (!location)
          throw new UsageError(
            'no repository location given',
            'vmvault init DIR (or s3:https://HOST/BUCKET[/PREFIX])',
          );
        const given = (name: string): boolean => cmd.getOptionValueSource(name) === 'cli';
        let chunkSizeBytes = parseSize(opts.chunkSize, 'chunk size');
        let packSizeBytes = parseSize(opts.packSize, 'pack size');
        let levelZstd = parseCompression(opts.compression);
        let encryption = opts.encryption;
        let masterKey: Buffer | undefined;
        let pageSlots: number | undefined;
        if (opts.fromRepo !== undefined) {
          // The source's layout, so that sync copies chunks and pages as they are (docs/sync.md).
          const src = await openRepo(
            {
              repo: opts.fromRepo,
              password: () =>
                readOtherPassword('VMVAULT_FROM_', {
                  passwordFile: opts.fromPasswordFile,
                  prompt: 'source password: ',
                }),
            },
            'read',
          );
          try {
            const sc = src.config;
            if (given('chunkSize') && chunkSizeBytes !== sc.chunkSizeBytes)
              throw new UsageError(
                `--chunk-size ${opts.chunkSize} differs from the chunk size of ${src.location} (${formatBytes(sc.chunkSizeBytes)}): sync needs them equal`,
                "drop --chunk-size: --from-repo takes the source's",
              );
            chunkSizeBytes = sc.chunkSizeBytes;
            if (!given('packSize')) packSizeBytes = sc.packSizeBytes;
            if (!given('compression')) levelZstd = sc.compression.codec === 'none' ? 0 : sc.compression.level;
            pageSlots = sc.pageSlots;
            if (sc.encryption === 'aes-256-gcm' && !given('encryption')) {
              encryption = 'aes-256-gcm';
              masterKey = src.masterKey;
            }
          } finally {
            await src.close();
          }
        }
        const encrypted = encryption === 'aes-256-gcm';
        const passwordFile = opts.passwordFile ?? globals(cmd).passwordFile;
        const kdf = testKdf();
        let objectLock: { days: number; mode: 'governance' | 'compliance' } | undefined;
        if (opts.objectLockDays !== undefined) {
          if (!/^\d{1,6}$/.test(opts.objectLockDays))
            throw new UsageError(
              `invalid --object-lock-days '${opts.objectLockDays}'`,
              'give a whole number of days, e.g. --object-lock-days 30',
            );
          objectLock = { days: Number(opts.objectLockDays), mode: opts.objectLockMode };
        } else if (given('objectLockMode'))
          throw new UsageError('--object-lock-mode needs --object-lock-days', 'add --object-lock-days DAYS');
        const repo = await Repository.init(
          location,
          {
            chunkSizeBytes,
            packSizeBytes,
            levelZstd,
            encryption,
            ...(masterKey ? { masterKey } : {}),
            ...(pageSlots !== undefined ? { pageSlots } : {}),
            ...(encrypted
              ? { password: await readPassword({ passwordFile, confirm: true, prompt: 'new password: ' }) }
              : {}),
            ...(kdf ? { kdf } : {}),
            ...(objectLock ? { objectLock } : {}),
          },
          openBackendFor(location),
        );
        await repo.close();
        const c = repo.config;
        const modes = await accessModes(repo.location);
        if (opts.json)
          printJson({
            location: repo.location,
            id: c.id,
            chunkSizeBytes: c.chunkSizeBytes,
            packSizeBytes: c.packSizeBytes,
            compression: c.compression,
            encryption: c.encryption,
            objectLock: c.objectLock ?? null,
            ...(repo.keySlot ? { keySlot: repo.keySlot.slice(5) } : {}),
            ...(modes ? { dirMode: octal(modes.dir), fileMode: octal(modes.file) } : {}),
          });
        else {
          process.stdout.write(
            `created repository ${c.id.slice(0, 8)} at ${repo.location} (chunk size ${formatBytes(c.chunkSizeBytes)}, pack size ${formatBytes(c.packSizeBytes)}, compression ${c.compression.codec === 'none' ? 'none' : `zstd:${c.compression.level}`}${encrypted ? `, encryption aes-256-gcm, key slot ${repo.keySlot?.slice(5, 13) ?? ''}` : ''}${c.objectLock ? `, Object Lock ${c.objectLock.mode} ${c.objectLock.days} days` : ''})\n`,
          );
          if (modes)
            process.stdout.write(
              modes.dir & 0o077
                ? `access: directories ${octal(modes.dir)}, files ${octal(modes.file)}\n`
                : `access: its owner only (directories ${octal(modes.dir)}, files ${octal(modes.file)}); to share it with a group: chmod 0750 DIR and chmod 0640 DIR/config, new objects follow\n`,
            );
        }
      },
    );
}

/** The modes of a local repository's directory and config (undefined for other backends). */
async function accessModes(location: string): Promise<{ dir: number; file: number } | undefined> {
  if (location.startsWith('s3:')) return undefined;
  try {
    const [dir, file] = await Promise.all([stat(location), stat(join(location, 'config'))]);
    return { dir: dir.mode & 0o7777, file: file.mode & 0o7777 };
  } catch {
    return undefined;
  }
}

function octal(mode: number): string {
  return `0${mode.toString(8)}`;
}
