import { Command } from 'commander';
import { formatBytes, printable } from '../../util/index.js';
import { repoStats } from '../../repo/index.js';
import { printJson, repoOption, withRepo } from '../context.js';

export function statsCommand(): Command {
  return new Command('stats')
    .description('repository statistics: logical and stored bytes, deduplication and compression ratios')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action(async (opts: { json?: boolean; repo?: string }) => {
      const st = await withRepo(
        opts,
        (r) =>
          repoStats(r, { onDamagedIndex: (m) => process.stderr.write(`warning: ${printable(m, 400)}\n`) }),
        'read',
      );
      if (opts.json) return printJson(st);
      process.stdout.write(
        [
          `snapshots          ${st.snapshots} (${st.vms} VM${st.vms === 1 ? '' : 's'})${
            st.snapshotsDamaged ? `, ${st.snapshotsDamaged} damaged left out` : ''
          }${st.indexesDamaged ? `; ${st.indexesDamaged} unreadable disk index${st.indexesDamaged === 1 ? '' : 'es'} left out` : ''}`,
          `virtual size       ${formatBytes(st.virtualBytes)}`,
          `logical data       ${formatBytes(st.logicalBytes)} (non-zero data of every snapshot)`,
          `unique data        ${formatBytes(st.uniqueBytes)} in ${st.chunksReferenced} chunks`,
          `stored             ${formatBytes(st.storedBytes)} (${formatBytes(st.dataStoredBytes)} of chunks: ${st.chunksStored} in ${st.packsStored} packs)`,
          `deduplication      ${st.dedupRatio.toFixed(2)}x`,
          `compression        ${st.compressionRatio.toFixed(2)}x`,
          `total saving       ${st.storedBytes ? (st.logicalBytes / st.storedBytes).toFixed(2) : '1.00'}x`,
          '',
        ].join('\n'),
      );
    });
}
