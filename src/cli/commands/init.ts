import { Command, Option } from 'commander';
import { formatBytes, parseSize, UsageError } from '../../util/index.js';
import { Repository, parseCompression } from '../../repo/index.js';
import { printJson } from '../context.js';

export function initCommand(): Command {
  return new Command('init')
    .description('create a new repository')
    .argument('[repo]', 'repository location (a directory); defaults to -r / VMVAULT_REPO')
    .addOption(new Option('-r, --repo <repo>', 'repository location').env('VMVAULT_REPO'))
    .option('--chunk-size <size>', 'chunk size, a power of two from 64K to 16M', '1M')
    .option('--compression <codec>', 'zstd, zstd:LEVEL (1-19; -7 to -1: faster, larger) or none', 'zstd:1')
    .option('--json', 'print the result as JSON')
    .action(
      async (
        repoArg: string | undefined,
        opts: { repo?: string; chunkSize: string; compression: string; json?: boolean },
      ) => {
        const location = repoArg ?? opts.repo;
        if (!location) throw new UsageError('no repository location given', 'vmvault init DIR');
        const repo = await Repository.init(location, {
          chunkSizeBytes: parseSize(opts.chunkSize, 'chunk size'),
          levelZstd: parseCompression(opts.compression),
        });
        await repo.close();
        const c = repo.config;
        if (opts.json)
          printJson({
            location: repo.location,
            id: c.id,
            chunkSizeBytes: c.chunkSizeBytes,
            compression: c.compression,
          });
        else
          process.stdout.write(
            `created repository ${c.id.slice(0, 8)} at ${repo.location} (chunk size ${formatBytes(c.chunkSizeBytes)}, compression ${c.compression.codec === 'none' ? 'none' : `zstd:${c.compression.level}`})\n`,
          );
      },
    );
}
