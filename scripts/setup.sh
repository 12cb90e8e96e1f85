#!/usr/bin/env bash
# Installs what vmvault needs on a Debian machine, then builds. Idempotent: each step is skipped
# when its result is already there.
#   scripts/setup.sh            what vmvault itself runs (system packages, as root) + npm install + build
#   scripts/setup.sh --tests    also what only the tests and benchmarks use (npm test does this)
#   scripts/setup.sh --link     also puts `vmvault` on the PATH: /usr/local/bin/vmvault -> bin/vmvault
#                               (as root; otherwise it prints the command)
#   SKIP_APT=1 scripts/setup.sh  no system packages, only npm install + build
set -euo pipefail
cd "$(dirname "$0")/.."

tests=0
link=0
for arg in "$@"; do
  case "$arg" in
    --tests) tests=1 ;;
    --link) link=1 ;;
    *) echo "usage: $0 [--tests] [--link]" >&2; exit 2 ;;
  esac
done

# What the product runs: qemu-img and qemu-nbd (qemu-utils); libvirtd and QEMU for live backups
# and the quick start's VM (libvirt-daemon-system, libvirt-clients for virsh, qemu-system-x86);
# ssh for qemu+ssh:// URIs (openssh-client: a client only, no daemon); mkfs.ext4 for the quick
# start's disk (e2fsprogs).
PRODUCT_PACKAGES=(qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients openssh-client e2fsprogs)
PRODUCT_TOOLS=(qemu-img qemu-nbd qemu-system-x86_64 libvirtd virsh ssh mkfs.ext4)
# What only the tests and benchmarks run: NBD peers (nbdkit, nbdinfo/nbdcopy), qemu-storage-daemon
# (in qemu-system-common, which qemu-system-x86 pulls in), an sshd and nc for the qemu+ssh://
# tests (the tests start their own sshd on 127.0.0.1; installing openssh-server also starts the
# system's), certtool for TLS certificates, nbdsh (python3-libnbd) for a client without
# structured replies, strace for the restore's fsync-order test, /usr/bin/time for the benchmarks,
# OpenStack Swift (proxy + account + container + object servers; its s3api middleware is the second
# S3 server the tests run on loopback, see test/helpers/s3-servers.ts; installing it starts no
# service and ships the /etc/swift/swift.conf the servers need); restic, borg (borgbackup) and
# rclone as the peers the benchmarks compare with (bench/README.md); chromium (headless, driven by
# playwright-core) for the web dashboard's browser test (docs/ui.md); systemd-analyze (systemd) to
# verify contrib/systemd's units; the Prometheus client's Python text-format parser
# (python3-prometheus-client) to read back --metrics-file in test/cli/run-reports.test.ts;
# libguestfs-tools (guestfish, guestunmount) and fuse3 (fusermount3) for file-level restore
# (`vmvault files`, `vmvault mount`): optional for the product, which says what to install when
# they are missing (docs/restore.md, "File-level restore"), because the libguestfs appliance pulls
# in a kernel and supermin that a backup host does not otherwise need.
TEST_PACKAGES=(nbdkit libnbd-bin python3-libnbd openssh-server netcat-openbsd gnutls-bin strace time
  swift-proxy swift-account swift-container swift-object restic borgbackup rclone chromium systemd
  python3-prometheus-client libguestfs-tools fuse3)
TEST_TOOLS=(qemu-storage-daemon nbdkit nbdinfo nbdcopy nbdsh sshd nc certtool strace
  swift-proxy-server swift-account-server swift-container-server swift-object-server swift-ring-builder
  restic borg rclone chromium systemd-analyze guestfish guestunmount fusermount3)

packages=("${PRODUCT_PACKAGES[@]}")
tools=("${PRODUCT_TOOLS[@]}")
if [ "$tests" = 1 ]; then
  packages+=("${TEST_PACKAGES[@]}")
  tools+=("${TEST_TOOLS[@]}")
fi

missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || [ -x "/sbin/$t" ] || missing+=("$t"); done
if [ "$tests" = 1 ] && [ ! -x /usr/bin/time ]; then missing+=(/usr/bin/time); fi
if [ "$tests" = 1 ] && ! /usr/bin/python3 -c 'import prometheus_client.parser' 2>/dev/null; then
  missing+=(python3-prometheus-client)
fi
if [ "${SKIP_APT:-0}" != 1 ] && [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing tools (${missing[*]}); run this script as root to install: ${packages[*]}" >&2
    exit 1
  fi
  echo "setup: installing system packages (missing: ${missing[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${packages[@]}" >/dev/null
fi

# `npm install` (honouring package-lock.json), not `npm ci`: the registry this project uses lacks
# @napi-rs/blake-hash's optional binaries for other platforms, and npm ci rejects a lockfile
# without them as "out of sync" although nothing is missing for this platform.
if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ] || [ package.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm install" >&2
  npm install --no-fund --no-audit 2>&1 | grep -v 'Unknown \(user\|env\) config' >&2 || true
  node -e "require('@napi-rs/blake-hash'); require('zstd-napi')" 2>/dev/null || { echo "setup: npm install failed (see above)" >&2; exit 1; }
fi

echo "setup: building" >&2
npm run -s build 2>&1 | grep -v 'Unknown user config' >&2 || true
[ -f dist/cli/main.js ] || { echo "setup: build failed" >&2; exit 1; }

if [ "$link" = 1 ]; then
  target="$PWD/bin/vmvault"
  dest=/usr/local/bin/vmvault
  if [ "$(readlink "$dest" 2>/dev/null || true)" = "$target" ]; then
    : # already there
  elif [ -e "$dest" ] && [ ! -L "$dest" ]; then
    echo "setup: $dest exists and is not a link; leaving it (run $target directly)" >&2
  elif [ "$(id -u)" = 0 ]; then
    ln -sfn "$target" "$dest"
    echo "setup: linked $dest -> $target (remove it with: rm $dest)" >&2
  else
    echo "setup: to put vmvault on the PATH, run as root: ln -s $target $dest" >&2
  fi
fi
