import { UsageError, VmvaultError, printable } from '../../util/index.js';

/**
 * The virtual tree of file-level restore (Proxmox's file restore does the same): the first path
 * components name a filesystem of the disk, the rest is a path inside it.
 *
 *   /part1/etc/hostname      partition 1 of the disk
 *   /lvm/VG/LV/...           a logical volume
 *   /fs/...                  a disk with one filesystem and no partition table
 *   /md/NAME/..., /mapper/NAME/...   software RAID and other device-mapper volumes
 *
 * With several disks in one appliance (`vmvault mount` of a multi-disk snapshot) partitions and
 * whole-disk filesystems get the disk's name first (`/vda/part1`, `/vdb/fs`); logical volumes,
 * which may span disks, stay at `/lvm/VG/LV`.
 */

/** A filesystem libguestfs found (list-filesystems), under its virtual name. */
export interface GuestFilesystem {
  /** `part1`, `lvm/vg0/root`, `fs`, `vda/part1`: no leading slash. */
  name: string;
  /** The appliance's device, e.g. /dev/sda1, /dev/vg0/root. */
  device: string;
  /** What libguestfs detected: ext4, xfs, vfat, ntfs, btrfs, swap, unknown, ... */
  fsType: string;
  sizeBytes?: number;
}

/** The letters of the i-th drive added to the appliance: 0 → a (/dev/sda), 25 → z, 26 → aa. */
export function driveLetters(i: number): string {
  let s = '';
  for (let n = i + 1; n > 0; n = Math.floor((n - 1) / 26)) s = String.fromCharCode(97 + ((n - 1) % 26)) + s;
  return s;
}

function driveIndex(letters: string): number {
  let n = 0;
  for (const c of letters) n = n * 26 + (c.charCodeAt(0) - 96);
  return n - 1;
}

/** A component of a virtual name: what LVM, md and device-mapper allow, nothing path-like. */
const SAFE_COMPONENT = /^[A-Za-z0-9+_.-]{1,128}$/;
const safe = (c: string | undefined): c is string =>
  c !== undefined && SAFE_COMPONENT.test(c) && !/^\.+$/.test(c);

/**
 * The virtual name of an appliance device, given the disks in the order they were added; undefined
 * for what has no place in the tree (btrfs subvolumes: they are directories of their volume).
 */
export function filesystemName(device: string, disks: readonly string[]): string | undefined {
  const sd = /^\/dev\/(?:sd|vd)([a-z]+)(\d*)$/.exec(device);
  if (sd) {
    const i = driveIndex(sd[1]!);
    if (i < 0 || i >= disks.length) return undefined;
    const local = sd[2] ? `part${Number(sd[2])}` : 'fs';
    return disks.length > 1 ? `${disks[i]}/${local}` : local;
  }
  const m = /^\/dev\/(md|mapper)\/([^/]+)$/.exec(device);
  if (m) return safe(m[2]) ? `${m[1]}/${m[2]}` : undefined;
  const md = /^\/dev\/(md\d+)$/.exec(device);
  if (md) return `md/${md[1]}`;
  const lv = /^\/dev\/([^/]+)\/([^/]+)$/.exec(device);
  if (lv && safe(lv[1]) && safe(lv[2])) return `lvm/${lv[1]}/${lv[2]}`;
  return undefined;
}

/**
 * `list-filesystems` output (`/dev/sda1: ext4` per line) as filesystems under their virtual names,
 * in the tree's order (partitions by number, then the rest by name).
 */
export function parseFilesystems(text: string, disks: readonly string[]): GuestFilesystem[] {
  const out: GuestFilesystem[] = [];
  for (const line of text.split('\n')) {
    const m = /^(\S+): (\S+)$/.exec(line);
    if (!m) continue;
    const name = filesystemName(m[1]!, disks);
    if (name !== undefined && !out.some((f) => f.name === name))
      out.push({ name, device: m[1]!, fsType: m[2]! });
  }
  const key = (n: string): string => n.replace(/\d+/g, (d) => d.padStart(8, '0'));
  return out.sort((a, b) => (key(a.name) < key(b.name) ? -1 : key(a.name) > key(b.name) ? 1 : 0));
}

/** A path with its `.` and `..` resolved lexically (never above `/`), as components. */
export function pathComponents(path: string): string[] {
  if (path.includes('\0')) throw new UsageError(`path '${printable(path, 80)}' holds a NUL byte`);
  const out: string[] = [];
  for (const c of path.split('/')) {
    if (c === '' || c === '.') continue;
    if (c === '..') out.pop();
    else out.push(c);
  }
  return out;
}

/** Where a virtual path leads: a directory of the tree itself, or into a filesystem. */
export type ResolvedPath =
  | { kind: 'virtual'; path: string; children: Array<{ name: string; fs?: GuestFilesystem }> }
  | { kind: 'fs'; path: string; fs: GuestFilesystem; inner: string };

export class GuestPathNotFoundError extends VmvaultError {
  constructor(path: string, hint: string) {
    super('NOT_FOUND', `no such file or directory: ${printable(path, 300)}`, { hint });
  }
}

/** Resolves a virtual path against the disk's filesystems (see the top of this file). */
export function resolveGuestPath(path: string, filesystems: readonly GuestFilesystem[]): ResolvedPath {
  const parts = pathComponents(path);
  for (let i = 1; i <= parts.length; i++) {
    const prefix = parts.slice(0, i).join('/');
    const fs = filesystems.find((f) => f.name === prefix);
    if (fs) {
      const inner = `/${parts.slice(i).join('/')}`;
      return { kind: 'fs', path: `/${parts.join('/')}`, fs, inner };
    }
  }
  const prefix = parts.join('/');
  const below = filesystems.filter((f) => prefix === '' || f.name.startsWith(`${prefix}/`));
  if (below.length === 0)
    throw new GuestPathNotFoundError(
      `/${prefix}`,
      filesystems.length === 0
        ? 'libguestfs found no filesystem on this disk'
        : `the disk's filesystems are ${filesystems.map((f) => `/${f.name}`).join(', ')}`,
    );
  const children: Array<{ name: string; fs?: GuestFilesystem }> = [];
  for (const f of below) {
    const rest = prefix === '' ? f.name : f.name.slice(prefix.length + 1);
    // `ls /` names every filesystem in full (`lvm/vg0/root`); deeper levels list one component.
    const name = prefix === '' ? rest : rest.split('/')[0]!;
    if (children.some((c) => c.name === name)) continue;
    children.push(name === rest ? { name, fs: f } : { name });
  }
  return { kind: 'virtual', path: `/${prefix}`, children };
}

/** `/a/b` + `c` → `/a/b/c`. */
export function joinGuest(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}
