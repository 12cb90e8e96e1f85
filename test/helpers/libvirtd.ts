/**
 * A private libvirtd for the `vm` test project, started once per run (vitest globalSetup) with
 * scripts/libvirt-env.sh (own mount namespace, config, sockets and state; see docs/libvirt.md).
 *
 * Test files get its URI with `libvirtUri()` (vitest inject, or VMVAULT_TEST_LIBVIRT_URI). When
 * VMVAULT_TEST_LIBVIRT_URI is already set, that daemon is used and nothing is started. When
 * libvirtd is not installed or we are not root, the URI is '' and suites skip (fail in strict mode).
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { inject } from 'vitest';
import type { TestProject } from 'vitest/node';
import { hasTool, isRoot } from './tools.js';

declare module 'vitest' {
  export interface ProvidedContext {
    libvirtUri: string;
    libvirtSkipReason: string;
  }
}

const run = promisify(execFile);
const ENV_SCRIPT = fileURLToPath(new URL('../../scripts/libvirt-env.sh', import.meta.url));

export interface PrivateLibvirtd {
  uri: string;
  dir: string;
  /** Socket path (for qemu+ssh:// URIs with `socket=`). */
  socket: string;
  stop(): Promise<void>;
}

/** Starts a private libvirtd with its state in a fresh directory under /tmp (short socket paths). */
export async function startPrivateLibvirtd(): Promise<PrivateLibvirtd> {
  const dir = await mkdtemp('/tmp/vmvault-lv-');
  let uri: string;
  try {
    uri = (await run('bash', [ENV_SCRIPT, 'start', dir])).stdout.trim().split('\n').pop() ?? '';
  } catch (err) {
    await run('bash', [ENV_SCRIPT, 'stop', dir]).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`cannot start a private libvirtd: ${stderr.trim() || (err as Error).message}`);
  }
  let stopped = false;
  return {
    uri,
    dir,
    socket: `${dir}/sock/libvirt-sock`,
    async stop() {
      if (stopped) return;
      stopped = true;
      await run('bash', [ENV_SCRIPT, 'stop', dir]);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function skipReason(): string {
  if (!isRoot) return 'the private libvirtd needs root';
  const missing = ['libvirtd', 'virsh', 'qemu-system-x86_64', 'qemu-img'].filter((t) => !hasTool(t));
  return missing.length > 0 ? `missing tools: ${missing.join(', ')} (run scripts/setup.sh as root)` : '';
}

/** vitest globalSetup for the `vm` project. */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const given = process.env.VMVAULT_TEST_LIBVIRT_URI;
  if (given) {
    project.provide('libvirtUri', given);
    project.provide('libvirtSkipReason', '');
    return async () => {};
  }
  const reason = skipReason();
  if (reason) {
    if (process.env.VMVAULT_TEST_STRICT === '1') throw new Error(reason);
    project.provide('libvirtUri', '');
    project.provide('libvirtSkipReason', reason);
    return async () => {};
  }
  const daemon = await startPrivateLibvirtd();
  project.provide('libvirtUri', daemon.uri);
  project.provide('libvirtSkipReason', '');
  process.env.VMVAULT_TEST_LIBVIRT_URI = daemon.uri;
  return () => daemon.stop();
}

/** The URI of the test daemon, or '' when the suite must skip (see libvirtSkipReason()). */
export function libvirtUri(): string {
  try {
    return inject('libvirtUri');
  } catch {
    return process.env.VMVAULT_TEST_LIBVIRT_URI ?? '';
  }
}

export function libvirtSkipReason(): string {
  try {
    return inject('libvirtSkipReason') || (libvirtUri() ? '' : 'no libvirt daemon for tests');
  } catch {
    return libvirtUri() ? '' : 'no libvirt daemon for tests (run through the vm project)';
  }
}

/** The socket path inside a `qemu+unix:///system?socket=PATH` URI. */
export function socketOf(uri: string): string {
  const m = /[?&]socket=([^&]+)/.exec(uri);
  if (!m) throw new Error(`URI ${uri} has no socket= parameter`);
  return decodeURIComponent(m[1]!);
}
