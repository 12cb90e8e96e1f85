import { describe, expect, it } from 'vitest';
import {
  childPath,
  fileNameFor,
  isSafeDiskTarget,
  isSafeFileName,
  isSafeVmName,
  printable,
  UnsafePathError,
} from '../../src/util/index.js';

describe('name rules', () => {
  it('disk targets: plain names only', () => {
    for (const ok of ['vda', 'sdb', 'hdc', 'disk0', 'vd-1', 'nvme0n1'])
      expect(isSafeDiskTarget(ok)).toBe(true);
    for (const bad of ['', '.', '..', '../x', '/etc/x', 'a/b', 'vd{', 'a\nb', '-x', 'x'.repeat(33), 'a b'])
      expect(isSafeDiskTarget(bad)).toBe(false);
  });
  it('file names: no paths, no dot files', () => {
    for (const ok of ['nvram.fd', 'vmlinuz-6.1', 'OVMF_VARS.fd', 'initrd.img'])
      expect(isSafeFileName(ok)).toBe(true);
    for (const bad of ['', '.', '..', '.hidden', '../x', '/x', 'a/b', 'a\\b', 'a\0b', 'x'.repeat(129)])
      expect(isSafeFileName(bad)).toBe(false);
  });
  it('VM names: printable, no slash', () => {
    for (const ok of ['web-1', 'My VM', 'тест', 'a.b']) expect(isSafeVmName(ok)).toBe(true);
    for (const bad of ['', '.', '..', 'a/b', 'a\nb', 'x\u001b[31m', 'x'.repeat(201)])
      expect(isSafeVmName(bad)).toBe(false);
  });
  it('printable escapes control characters and cuts long text', () => {
    expect(printable('a\nb\u001b[2Jc')).toBe('a\\x0ab\\x1b[2Jc');
    expect(printable('x'.repeat(300), 10)).toHaveLength(10);
  });
  it('childPath never leaves the directory', () => {
    expect(childPath('/tmp/out', 'vda.qcow2')).toBe('/tmp/out/vda.qcow2');
    for (const bad of ['', '.', '..', '../x', '/etc/passwd', 'a/../../b', 'a\0b', 'a\\b'])
      expect(() => childPath('/tmp/out', bad)).toThrow(UnsafePathError);
  });
  it('fileNameFor maps any text to a safe file name', () => {
    expect(fileNameFor('../../etc/x', '.xml')).toBe('__.._etc_x.xml');
    expect(isSafeFileName(fileNameFor('a\nb/c', '.xml'))).toBe(true);
    expect(isSafeFileName(fileNameFor('..', '.xml'))).toBe(true);
  });
});
