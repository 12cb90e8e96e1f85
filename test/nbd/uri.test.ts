import { describe, expect, it } from 'vitest';
import { formatNbdUri, parseNbdUri } from '../../src/nbd/index.js';
import { UsageError } from '../../src/util/index.js';

describe('NBD URIs (doc/uri.md)', () => {
  it.each([
    ['nbd://example.com/disk', { host: 'example.com', port: 10809, exportName: 'disk', tls: false }],
    ['nbd://example.com:10810/', { host: 'example.com', port: 10810, exportName: '' }],
    ['nbd://example.com', { host: 'example.com', exportName: '' }],
    ['nbd://example.com//disk', { exportName: '/disk' }],
    ['nbd://example.com/hello%20world', { exportName: 'hello world' }],
    ['nbd://[::1]:1234/x', { host: '::1', port: 1234, exportName: 'x' }],
    ['nbds://10.0.0.1/vda', { host: '10.0.0.1', tls: true, exportName: 'vda' }],
    ['nbd+unix:///disk?socket=/run/nbd.sock', { socketPath: '/run/nbd.sock', exportName: 'disk' }],
    ['nbd+unix:///?socket=nbd.sock', { socketPath: 'nbd.sock', exportName: '' }],
    [
      'nbds+unix:///e?socket=/s&tls-hostname=srv',
      { socketPath: '/s', tls: true, params: { 'tls-hostname': 'srv' } },
    ],
  ])('parses %s', (uri, want) => {
    expect(parseNbdUri(uri)).toMatchObject(want);
  });

  it.each([
    'http://example.com/disk',
    'nbd+unix:///disk',
    'nbd+unix://host/disk?socket=/s',
    'nbd://example.com/disk?socket=/s',
    'nbd://example.com/disk?bogus=1',
    'not a uri',
  ])('rejects %s with a usage error', (uri) => {
    expect(() => parseNbdUri(uri)).toThrow(UsageError);
  });

  it.each([
    'nbd://example.com/disk',
    'nbd://example.com:10810/hello%20world',
    'nbd://[::1]:1234/x',
    'nbds://10.0.0.1/vda',
    'nbd+unix:///disk?socket=/run/nbd.sock',
    'nbd+unix:///?socket=/tmp/a%20b/c.sock',
  ])('formats what it parses: %s', (uri) => {
    const parsed = parseNbdUri(uri);
    expect(parseNbdUri(formatNbdUri(parsed))).toEqual(parsed);
  });

  it('formats unix and TCP URIs like qemu expects them', () => {
    expect(formatNbdUri({ tls: false, socketPath: '/tmp/x/nbd.sock', exportName: 'vda' })).toBe(
      'nbd+unix:///vda?socket=/tmp/x/nbd.sock',
    );
    expect(formatNbdUri({ tls: false, host: '127.0.0.1', port: 10809, exportName: '' })).toBe(
      'nbd://127.0.0.1/',
    );
  });
});
