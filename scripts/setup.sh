#!/usr/bin/env bash
# Installs everything vmvault and its tests need on a Debian machine, then builds.
# Idempotent: each step is skipped when its result is already there.
#   scripts/setup.sh            system packages (as root) + npm ci + build
#   SKIP_APT=1 scripts/setup.sh  only npm ci + build
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  qemu-utils qemu-system-x86 libvirt-daemon-system libvirt-clients nbdkit libnbd-bin
  openssh-server openssh-client netcat-openbsd e2fsprogs gnutls-bin time
)
# Tools each package provides, to decide whether apt must run at all.
NEEDED_TOOLS=(qemu-img qemu-nbd qemu-storage-daemon qemu-system-x86_64 libvirtd virsh virtlogd nbdkit nbdinfo nbdcopy sshd nc mkfs.ext4 certtool)

missing=()
for t in "${NEEDED_TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || missing+=("$t"); done
[ -x /usr/bin/time ] || missing+=(/usr/bin/time)
if [ "${SKIP_APT:-0}" != 1 ] && [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing tools (${missing[*]}); run this script as root to install: ${APT_PACKAGES[*]}" >&2
    exit 1
  fi
  echo "setup: installing system packages (missing: ${missing[*]})" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
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
