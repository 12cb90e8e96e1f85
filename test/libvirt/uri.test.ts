import { describe, expect, it } from 'vitest';
import { LibvirtUriError, localSocketPath, parseLibvirtUri } from '../../src/libvirt/index.js';
import { shellQuote, sshArgs, sshRemoteCommand } from '../../src/libvirt/transport/dial.js';

describe('libvirt URI parsing', () => {
  it('parses local URIs and picks the daemon socket', () => {
    const u = parseLibvirtUri('qemu:///system');
    expect(u).toMatchObject({ transport: 'unix', mode: 'system', driverUri: 'qemu:///system' });
    expect(localSocketPath(u, () => false)).toBe('/run/libvirt/libvirt-sock');
    expect(localSocketPath(u, (p) => p === '/run/libvirt/virtqemud-sock')).toBe(
      '/run/libvirt/virtqemud-sock',
    );
    expect(parseLibvirtUri('qemu:///session')).toMatchObject({
      transport: 'unix',
      mode: 'session',
      driverUri: 'qemu:///session',
    });
    const s = parseLibvirtUri('qemu+unix:///system?socket=/tmp/a%20b/libvirt-sock');
    expect(s.socket).toBe('/tmp/a b/libvirt-sock');
    expect(localSocketPath(s)).toBe('/tmp/a b/libvirt-sock');
    expect(s.driverUri).toBe('qemu:///system');
  });

  it('parses ssh URIs with user, port and parameters', () => {
    const u = parseLibvirtUri(
      'qemu+ssh://backup@host.example:2222/system?keyfile=/k/id&socket=/s/sock&known_hosts=/k/kh&no_verify=1',
    );
    expect(u).toMatchObject({
      transport: 'ssh',
      host: 'host.example',
      port: 2222,
      user: 'backup',
      keyfile: '/k/id',
      socket: '/s/sock',
      knownHosts: '/k/kh',
      noVerify: true,
      proxy: 'auto',
      driverUri: 'qemu:///system',
    });
    expect(parseLibvirtUri('qemu+ssh://[::1]/system').host).toBe('::1');
    expect(parseLibvirtUri('qemu+ssh://h/system').port).toBeUndefined();
  });

  it('parses tcp URIs with the default port', () => {
    expect(parseLibvirtUri('qemu+tcp://10.0.0.1/system')).toMatchObject({
      transport: 'tcp',
      host: '10.0.0.1',
      port: 16509,
    });
    expect(parseLibvirtUri('qemu+tcp://h:1234/system').port).toBe(1234);
  });

  it.each([
    ['', /not a URI/],
    ['/var/run/libvirt', /not a URI/],
    ['xen:///system', /driver 'xen' is not supported/],
    ['qemu:///', /must be \/system or \/session/],
    ['qemu:///embed?root=/x', /must be \/system or \/session/],
    ['qemu://host/system', /TLS/],
    ['qemu+tls://host/system', /transport 'tls' is not supported/],
    ['qemu+ssh:///system', /needs a host/],
    ['qemu+tcp:///system', /needs a host/],
    ['qemu+ssh://h:99999/system', /bad port|malformed/],
    ['qemu+ssh://h/system?bogus=1', /unsupported parameter 'bogus'/],
    ['qemu:///system?keyfile=/k', /only applies to qemu\+ssh/],
    ['qemu+tcp://h/system?socket=/s', /does not apply to qemu\+tcp/],
    ['qemu+ssh://u:pw@h/system', /passwords/],
    ['qemu+ssh://h/system?proxy=weird', /proxy 'weird'/],
  ])('rejects %j', (uri, re) => {
    let err: unknown;
    try {
      parseLibvirtUri(uri);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(LibvirtUriError);
    expect((err as LibvirtUriError).message).toMatch(re);
    expect((err as LibvirtUriError).exitCode).toBe(2);
    expect((err as LibvirtUriError).oneLine()).not.toContain('\n');
  });
});

describe('ssh command line', () => {
  it('quotes words for the remote shell', () => {
    expect(shellQuote('/run/libvirt/libvirt-sock')).toBe('/run/libvirt/libvirt-sock');
    expect(shellQuote("a b'c")).toBe(`'a b'\\''c'`);
  });

  it('uses virt-ssh-helper when available, else nc, like virnetclient', () => {
    const u = parseLibvirtUri('qemu+ssh://root@h:22/system?keyfile=/k');
    const args = sshArgs(u);
    expect(args.slice(0, -2)).toEqual([
      '-p',
      '22',
      '-l',
      'root',
      '-i',
      '/k',
      '-T',
      '-e',
      'none',
      '-o',
      'BatchMode=yes',
      '--',
    ]);
    expect(args.at(-2)).toBe('h');
    const cmd = sshRemoteCommand(u);
    expect(cmd.startsWith("sh -c '")).toBe(true);
    expect(cmd).toContain('virt-ssh-helper');
    expect(cmd).toContain('qemu:///system');
    expect(cmd).toContain('-U /run/libvirt/libvirt-sock');
  });

  it('always uses nc on an explicit socket', () => {
    const cmd = sshRemoteCommand(parseLibvirtUri('qemu+ssh://h/system?socket=/tmp/x/libvirt-sock'));
    expect(cmd).not.toContain('virt-ssh-helper');
    expect(cmd).toContain('-U /tmp/x/libvirt-sock');
    expect(cmd).toContain('ARG=-q0');
  });
});
