/**
 * A private libvirtd with TCG domains on copies of the bench image, as bench/vm-backup.ts sets up:
 * for benches that back up a live VM. Root only.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { sh } from './harness.js';

/** Why a live VM bench cannot run here, or undefined when it can. */
export async function vmUnavailable(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return 'not root';
  for (const t of ['/usr/sbin/libvirtd', '/usr/bin/virsh', '/usr/bin/qemu-system-x86_64'])
    if (!existsSync(t)) return `${t} is missing (scripts/setup.sh installs it)`;
  return undefined;
}

export interface Libvirt {
  uri: string;
  virsh(args: string): Promise<string>;
  /** Defines a TCG domain (64 MiB, 1 vCPU, no OS to boot) whose disk vda is `qcow2`. */
  define(name: string, qcow2: string): Promise<void>;
  /** Starts a domain and waits until QEMU idles (a TCG guest spends its first seconds in firmware). */
  start(name: string): Promise<void>;
  /** Guest-visible writes into vda through QEMU's monitor: `count` × 2 MiB spread over the disk. */
  guestWrites(name: string, phase: number, count: number, spacingMiB: number): Promise<void>;
  /** Deletes every checkpoint of a domain (children first). */
  dropCheckpoints(name: string): Promise<void>;
  stop(): Promise<void>;
}

/** Starts a private libvirtd (scripts/libvirt-env.sh) whose state lives in `dir`. */
export async function startLibvirt(dir: string): Promise<Libvirt> {
  // virtnbdbackup treats qemu+unix:// as remote; vmvault takes either form.
  const uri = (await sh(`bash scripts/libvirt-env.sh start ${dir}`))
    .trim()
    .replace('qemu+unix://', 'qemu://');
  const virsh = (args: string): Promise<string> => sh(`virsh -q -c '${uri}' ${args}`);
  return {
    uri,
    virsh,
    async define(name, qcow2) {
      const xml = join(dir, `${name}.xml`);
      writeFileSync(
        xml,
        `<domain type='qemu'><name>${name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${qcow2}'/><target dev='vda' bus='virtio'/><alias name='ua-vda'/></disk></devices></domain>`,
      );
      await virsh(`define ${xml}`);
    },
    async start(name) {
      await virsh(`start ${name}`);
      const pid = (await sh(`pgrep -f 'guest=${name},' | head -1`)).trim();
      const cpu = (): number => {
        const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
        return Number(f[11]) + Number(f[12]);
      };
      for (let i = 0; i < 60; i++) {
        const a = cpu();
        await new Promise((r) => setTimeout(r, 1000));
        if (cpu() - a < 10) return; // under 10% of a core
      }
    },
    async guestWrites(name, phase, count, spacingMiB) {
      for (let i = 0; i < count; i++)
        await virsh(
          `qemu-monitor-command ${name} --hmp 'qemu-io -d /machine/peripheral/ua-vda/virtio-backend "write -P ${(phase * count + i + 1) % 256} ${i * spacingMiB}M 2M"'`,
        );
    },
    async dropCheckpoints(name) {
      for (const c of (await virsh(`checkpoint-list ${name} --name --topological`))
        .split('\n')
        .filter(Boolean)
        .reverse())
        await virsh(`checkpoint-delete ${name} ${c}`);
    },
    async stop() {
      await sh(`bash scripts/libvirt-env.sh stop ${dir} >/dev/null 2>&1 || true`);
    },
  };
}

/** Allocated (data) bytes of an image, from `qemu-img map`. */
export async function allocatedBytes(image: string): Promise<number> {
  return Number(
    (
      await sh(
        `qemu-img map --output=json ${image} | python3 -c "import json,sys; print(sum(e['length'] for e in json.load(sys.stdin) if e['data']))"`,
      )
    ).trim(),
  );
}
