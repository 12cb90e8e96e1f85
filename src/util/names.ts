import { isAbsolute, relative, resolve, sep } from 'node:path';
import { VmvaultError } from './errors.js';

/**
 * Names that come from outside (the command line, libvirt, or a manifest that any host sharing the
 * repository may have written) and end up in file names, export names or terminal output. One set
 * of rules for all of them, so a name accepted at backup time is one a restore can use.
 */

/** A disk target (`vda`, `sdb`, `disk0`): what becomes `<target>.qcow2` and an NBD export name. */
const DISK_TARGET = /^[A-Za-z0-9][A-Za-z0-9_+-]{0,31}$/;
/** A file stored beside the disks (`nvram.fd`, `vmlinuz-6.1`): a plain file name, never a path. */
const FILE_NAME = /^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}$/;
/** Control characters (C0, DEL, C1) and Unicode line/paragraph separators. */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;
export const MAX_VM_NAME_LENGTH = 200;

export function isSafeDiskTarget(name: string): boolean {
  return DISK_TARGET.test(name);
}

export function isSafeFileName(name: string): boolean {
  return FILE_NAME.test(name) && name !== '.' && name !== '..';
}

/**
 * A VM name: libvirt allows almost anything but '/', so vmvault accepts any printable text of up to
 * 200 characters without '/', control characters, or the names '.' and '..'. A VM name is never
 * used as a path by itself: see `fileNameFor`.
 */
export function isSafeVmName(name: string): boolean {
  return (
    name.length > 0 &&
    name.length <= MAX_VM_NAME_LENGTH &&
    !CONTROL.test(name) &&
    !name.includes('/') &&
    name !== '.' &&
    name !== '..'
  );
}

/** Why a name was refused, as one clause for an error message. */
export const NAME_RULES = {
  disk: 'a disk name is 1 to 32 letters, digits, _, + or -, starting with a letter or digit',
  file: 'a file name is 1 to 128 letters, digits, _, ., + or -, not starting with . and never a path',
  vm: "a VM name is 1 to 200 printable characters without '/' or control characters",
} as const;

/**
 * Text from outside, made safe for one line on a terminal: control characters (newlines, escape
 * sequences) become `\xNN` / `\uNNNN`, so a crafted name can neither break a line nor drive the
 * terminal. Long text is cut to `max` characters with an ellipsis.
 */
export function printable(text: string, max = 200): string {
  // eslint-disable-next-line no-control-regex
  const out = text.replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g, (c) => {
    const n = c.charCodeAt(0);
    return n < 0x100 ? `\\x${n.toString(16).padStart(2, '0')}` : `\\u${n.toString(16).padStart(4, '0')}`;
  });
  return out.length > max ? `${out.slice(0, max - 1)}…` : out;
}

/** A path from joining untrusted names under `dir` left `dir` (or named nothing). */
export class UnsafePathError extends VmvaultError {
  constructor(dir: string, name: string) {
    super('UNSAFE_PATH', `refusing to write '${printable(name, 80)}' outside ${dir}`, {
      hint: 'the snapshot names a file that is not a plain file name; run vmvault check on the repository',
    });
  }
}

/**
 * `dir/name` for a name that must be one plain path component, checked after resolution: whatever
 * `name` holds ('..', '/etc/x', 'a/../../b', NUL), the result is a direct child of `dir` or an
 * UnsafePathError is thrown. The one way output paths are built from names read from a repository.
 */
export function childPath(dir: string, name: string): string {
  const base = resolve(dir);
  if (name.length === 0 || name.includes('\0') || name.includes('/') || name.includes('\\'))
    throw new UnsafePathError(base, name);
  const p = resolve(base, name);
  const rel = relative(base, p);
  if (rel === '' || rel === '..' || rel.startsWith(`..${sep}`) || isAbsolute(rel) || rel.includes(sep))
    throw new UnsafePathError(base, name);
  return p;
}

/**
 * A file name derived from free text (a VM name for `restore_<vm>.xml`): characters outside the
 * safe file-name set become '_', so any name maps to a usable, harmless file name.
 */
export function fileNameFor(text: string, suffix = ''): string {
  let s = text.replace(/[^A-Za-z0-9_.+-]/g, '_').replace(/^\.+/, '_');
  if (s.length === 0) s = '_';
  return `${s.slice(0, 128 - suffix.length)}${suffix}`;
}
