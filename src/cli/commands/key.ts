import { userInfo } from 'node:os';
import { Command } from 'commander';
import { printable, UsageError } from '../../util/index.js';
import {
  createKeySlot,
  defaultHost,
  KeySlotNotFoundError,
  listKeySlots,
  removeKeySlot,
  type Repository,
} from '../../repo/index.js';
import { globals, printJson, repoOption, testKdf, withRepo } from '../context.js';
import { readPassword } from '../password.js';

type KeyOpts = { repo?: string; json?: boolean; newPasswordFile?: string; force?: boolean };

/** `vmvault key list | add | remove ID | passwd` (docs/cli.md "key"). */
export function keyCommand(): Command {
  const key = new Command('key').description('manage the key slots (passwords) of an encrypted repository');
  const withKeys = async <T>(cmd: Command, opts: KeyOpts, fn: (repo: Repository) => Promise<T>): Promise<T> =>
    withRepo({ ...opts, ...pwFile(cmd) }, async (repo) => {
      if (repo.masterKey === undefined || repo.keySlot === undefined)
        throw new UsageError(
          `repository ${repo.location} is not encrypted`,
          "it has no key slots; 'vmvault init --encryption aes-256-gcm' makes an encrypted one",
        );
      return fn(repo);
    });
  key
    .command('list')
    .description('list the key slots (id, created, label, which one opened the repository)')
    .addOption(repoOption())
    .option('--json', 'print the result as JSON')
    .action(async (opts: KeyOpts, cmd: Command) =>
      withKeys(cmd, opts, async (repo) => {
        const slots = await listKeySlots(repo.backend, { repoId: repo.config.id });
        const rows = slots.map((s) => ({
          id: s.id,
          createdAt: s.createdAt,
          label: s.label,
          current: s.name === repo.keySlot,
        }));
        if (opts.json) printJson(rows);
        else
          for (const r of rows)
            process.stdout.write(
              `${r.current ? '*' : ' '} ${r.id}  ${r.createdAt}  ${printable(r.label, 80)}\n`,
            );
      }),
    );
  key
    .command('add')
    .description('add a key slot with a new password (the same master key)')
    .addOption(repoOption())
    .option('--new-password-file <file>', 'the new password: the first line of FILE')
    .option('--json', 'print the result as JSON')
    .action(async (opts: KeyOpts, cmd: Command) =>
      withKeys(cmd, opts, async (repo) => {
        const slot = await addSlot(repo, opts);
        if (opts.json) printJson({ id: slot.id, label: slot.label, createdAt: slot.createdAt });
        else process.stdout.write(`added key slot ${slot.id}\n`);
      }),
    );
  key
    .command('remove')
    .description('remove a key slot (never the last; the one in use only with --force)')
    .argument('<id>', 'the slot id (32 hex, from key list)')
    .addOption(repoOption())
    .option('--force', 'also remove the slot that opened the repository')
    .option('--json', 'print the result as JSON')
    .action(async (id: string, opts: KeyOpts, cmd: Command) =>
      withKeys(cmd, opts, async (repo) => {
        const slots = await listKeySlots(repo.backend, { repoId: repo.config.id });
        const slot = slots.find((s) => s.id === id.toLowerCase());
        if (slot === undefined) throw new KeySlotNotFoundError(id);
        if (slots.length === 1)
          throw new UsageError(
            `refusing to remove the last key slot ${slot.id}`,
            "add another first with 'vmvault key add'",
          );
        if (slot.name === repo.keySlot && !opts.force)
          throw new UsageError(
            `refusing to remove key slot ${slot.id}: it is the one this password opened`,
            "pass --force, or use 'vmvault key passwd' to change the password",
          );
        await removeKeySlot(repo.backend, slot.name);
        if (opts.json) printJson({ removed: slot.id });
        else process.stdout.write(`removed key slot ${slot.id}\n`);
      }),
    );
  key
    .command('passwd')
    .description('change the password: add a slot with the new one, then remove the one in use')
    .addOption(repoOption())
    .option('--new-password-file <file>', 'the new password: the first line of FILE')
    .option('--json', 'print the result as JSON')
    .action(async (opts: KeyOpts, cmd: Command) =>
      withKeys(cmd, opts, async (repo) => {
        const slot = await addSlot(repo, opts);
        const old = repo.keySlot!;
        await removeKeySlot(repo.backend, old);
        if (opts.json) printJson({ id: slot.id, removed: old.slice(5) });
        else process.stdout.write(`new key slot ${slot.id}; removed ${old.slice(5)}\n`);
      }),
    );
  return key;
}

function pwFile(cmd: Command): { passwordFile?: string } {
  const f = globals(cmd).passwordFile;
  return f === undefined ? {} : { passwordFile: f };
}

/** The new password: VMVAULT_NEW_PASSWORD, VMVAULT_NEW_PASSWORD_FILE or --new-password-file, VMVAULT_NEW_PASSWORD_COMMAND, or the prompt (twice). */
async function addSlot(repo: Repository, opts: KeyOpts): ReturnType<typeof createKeySlot> {
  const env = process.env;
  const password = await readPassword({
    passwordFile: opts.newPasswordFile,
    confirm: true,
    prompt: 'new password: ',
    env: {
      VMVAULT_PASSWORD: env.VMVAULT_NEW_PASSWORD,
      VMVAULT_PASSWORD_FILE: env.VMVAULT_NEW_PASSWORD_FILE,
      VMVAULT_PASSWORD_COMMAND: env.VMVAULT_NEW_PASSWORD_COMMAND,
    },
  });
  const kdf = testKdf();
  return createKeySlot(repo.backend, repo.config.id, repo.masterKey!, password, {
    label: `${userName()}@${defaultHost()}`,
    ...(kdf ? { kdf } : {}),
  });
}

function userName(): string {
  try {
    return userInfo().username;
  } catch {
    return 'user';
  }
}
