import { Command } from 'commander';
import { printable, UsageError } from '../../util/index.js';
import { MANIFEST_LIMITS, shortId, type Repository, type Snapshot } from '../../repo/index.js';
import { commaList, printJson, repoOption, withRepo } from '../context.js';

/** What a manifest refuses in a tag or note (manifest-schema.ts). */
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

type Change = Parameters<Repository['editSnapshot']>[1];

/** Applies `change` to the snapshot `ref` names and reports it (old id → new id). */
async function edit(
  ref: string,
  opts: { repo?: string; json?: boolean },
  change: Change,
  what: string,
): Promise<void> {
  const { before, after } = await withRepo(opts, async (r) => {
    const before = await r.resolveSnapshot(ref);
    return { before, after: await r.editSnapshot(before, change) };
  });
  if (opts.json)
    return printJson({
      previous: before.id,
      snapshot: after.id,
      tags: after.tags,
      protected: after.protected === true,
      ...(after.note === undefined ? {} : { note: after.note }),
    });
  process.stdout.write(
    `snapshot ${shortId(before.id)} ${what}${after.id !== before.id ? ` (now ${shortId(after.id)})` : ''}\n`,
  );
}

function checkTags(tags: string[]): string[] {
  for (const t of tags)
    if (t.length === 0 || t.length > MANIFEST_LIMITS.maxTagLength || CONTROL.test(t))
      throw new UsageError(
        `invalid tag '${printable(t, 60)}'`,
        `a tag is 1 to ${MANIFEST_LIMITS.maxTagLength} printable characters`,
      );
  return tags;
}

export function protectCommand(): Command {
  return new Command('protect')
    .description('protect a snapshot: forget never removes it')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action((ref: string, opts: { repo?: string; json?: boolean }) =>
      edit(ref, opts, { protected: true }, 'is protected'),
    );
}

export function unprotectCommand(): Command {
  return new Command('unprotect')
    .description('remove the protection of a snapshot')
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action((ref: string, opts: { repo?: string; json?: boolean }) =>
      edit(ref, opts, { protected: false }, 'is no longer protected'),
    );
}

export function tagCommand(): Command {
  return new Command('tag')
    .description("add or remove a snapshot's tags")
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .option('--add <tag>', 'add this tag (repeatable or comma separated)', commaList)
    .option('--remove <tag>', 'remove this tag (repeatable or comma separated)', commaList)
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action((ref: string, opts: { repo?: string; json?: boolean; add?: string[]; remove?: string[] }) => {
      if (!opts.add?.length && !opts.remove?.length)
        throw new UsageError(
          'tag needs --add or --remove',
          'e.g. vmvault tag web@latest --add before-upgrade',
        );
      const add = checkTags(opts.add ?? []);
      const remove = opts.remove ?? [];
      return edit(ref, opts, { addTags: add, removeTags: remove }, 'is tagged');
    });
}

export function noteCommand(): Command {
  return new Command('note')
    .description("set a snapshot's note (an empty text removes it)")
    .argument('<snapshot>', 'id, id prefix, VM@latest, VM@<date-time> or checkpoint name')
    .argument('<text>', 'the note: at most 4096 printable characters')
    .option('--json', 'print JSON')
    .addOption(repoOption())
    .action((ref: string, text: string, opts: { repo?: string; json?: boolean }) => {
      if ([...text].length > MANIFEST_LIMITS.maxNoteLength || CONTROL.test(text))
        throw new UsageError(
          'the note is refused',
          `a note is at most ${MANIFEST_LIMITS.maxNoteLength} printable characters`,
        );
      return edit(
        ref,
        opts,
        { note: text === '' ? null : text },
        text === '' ? 'has no note' : 'has a new note',
      );
    });
}

export type { Snapshot };
