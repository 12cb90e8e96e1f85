#!/usr/bin/env bash
# Quick start: installs what is missing, builds, then backs up and restores a real VM.
#   bash scripts/quickstart.sh [WORKDIR]
#
# It starts a private libvirt daemon (scripts/libvirt-env.sh; your own libvirtd and VMs are not
# touched), defines a small TCG VM whose disk holds an ext4 filesystem of real files, and then:
#   full backup → guest writes → incremental backup → restore to qcow2 + domain XML → the
#   restored VM is defined and started under libvirt.
#
# What it leaves (README.md, "Quick start"): the packages scripts/setup.sh installed when they were
# missing (libvirt-daemon-system enables the system's libvirtd sockets), /usr/local/bin/vmvault
# (a symlink to bin/vmvault), and WORKDIR (by default /tmp/vmvault-quickstart.XXXX, some 300 MB:
# the repository, the demo disk, the restored disk and the private daemon's state, where the two
# VMs stay defined). The private libvirtd and its VMs are stopped on exit; nothing goes to
# /var/tmp and no VM is defined in the system's libvirt.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --link
W=${1:-$(mktemp -d -t vmvault-quickstart.XXXX)}
mkdir -p "$W"; chmod 755 "$W"
W=$(realpath "$W")
V="$PWD/bin/vmvault"
LV="$W/libvirt"
URI=$(bash scripts/libvirt-env.sh start "$LV")
trap 'bash scripts/libvirt-env.sh stop "$LV" >/dev/null 2>&1 || true' EXIT
export LIBVIRT_DEFAULT_URI="$URI"
say() { printf '\n== %s\n' "$*"; }

say "a VM with a 512 MiB qcow2 disk holding real files"
mkdir -p "$W/files" && cp -r /usr/share/doc "$W/files/" 2>/dev/null || true
truncate -s 512M "$W/disk.raw" && mkfs.ext4 -q -F -d "$W/files" "$W/disk.raw" && rm -rf "$W/files"
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/demo.qcow2" && rm -f "$W/disk.raw"
cat > "$W/demo.xml" <<XML
<domain type='qemu'>
  <name>vmvault-demo</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='$W/demo.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <alias name='ua-vda'/>
    </disk>
  </devices>
</domain>
XML
virsh -q -c "$URI" define "$W/demo.xml" >/dev/null
virsh -q -c "$URI" start vmvault-demo >/dev/null

say "repository"
"$V" init "$W/repo"
export VMVAULT_REPO="$W/repo"

say "full backup of the running VM (pull-mode backup job + checkpoint)"
"$V" backup -d vmvault-demo --scratchdir "$W"

say "the guest writes 3 MiB (through QEMU's block layer, so the dirty bitmap sees it)"
virsh -q -c "$URI" qemu-monitor-command vmvault-demo --hmp \
  'qemu-io -d /machine/peripheral/ua-vda/virtio-backend "write -P 0x5a 100M 3M"' >/dev/null

say "incremental backup: reads only the changed chunks"
"$V" backup -d vmvault-demo --scratchdir "$W"
"$V" snapshots
"$V" stats

say "verify the repository: every snapshot, index and chunk, each chunk re-read and re-hashed"
"$V" check --read-data

say "restore the latest snapshot as qcow2 with an adjusted domain XML, define and start it"
"$V" restore vmvault-demo@latest -o "$W/restored" --define --name vmvault-demo-restored
qemu-img check -q "$W/restored/vda.qcow2" 2>/dev/null || qemu-img check "$W/restored/vda.qcow2"
virsh -q -c "$URI" start vmvault-demo-restored >/dev/null
virsh -c "$URI" list
virsh -q -c "$URI" destroy vmvault-demo >/dev/null
qemu-img convert -O raw "$W/demo.qcow2" "$W/original.raw"
qemu-img convert -U -O raw "$W/restored/vda.qcow2" "$W/restored.raw"
cmp "$W/original.raw" "$W/restored.raw" && rm -f "$W/original.raw" "$W/restored.raw"
say "the restored disk is identical to the VM's disk, and the restored VM ran under libvirt"
bash scripts/libvirt-env.sh stop "$LV" >/dev/null 2>&1 || true
trap - EXIT
echo "Left behind: $W ($(du -sh "$W" 2>/dev/null | cut -f1): repository, demo and restored disks, the private daemon's state); remove it with: rm -rf $W"
if command -v vmvault >/dev/null 2>&1; then
  echo "vmvault is on your PATH ($(command -v vmvault)); try: vmvault snapshots -r $W/repo"
else
  echo "vmvault is not on your PATH; run $V, or as root: ln -s $V /usr/local/bin/vmvault"
fi
