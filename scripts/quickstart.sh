#!/usr/bin/env bash
# Quick start: installs what is missing, builds, then backs up and restores a real disk image.
#   bash scripts/quickstart.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
W=${1:-$(mktemp -d -t vmvault-quickstart.XXXX)}
mkdir -p "$W"
V="$PWD/bin/vmvault"
echo "== quick start in $W"
# A 256 MiB ext4 disk image holding real files.
mkdir -p "$W/files" && cp -r /usr/share/doc "$W/files/" 2>/dev/null || true
truncate -s 256M "$W/disk.raw" && mkfs.ext4 -q -F -d "$W/files" "$W/disk.raw"
"$V" init "$W/repo"
"$V" backup-image -r "$W/repo" --vm demo "$W/disk.raw:vda"
# A second, almost identical disk: only the changed chunks are stored.
cp --sparse=always "$W/disk.raw" "$W/disk2.raw"
printf 'changed' | dd of="$W/disk2.raw" bs=1 seek=$((100*1024*1024)) conv=notrunc status=none
"$V" backup-image -r "$W/repo" --vm demo "$W/disk2.raw:vda"
"$V" snapshots -r "$W/repo"
"$V" stats -r "$W/repo"
"$V" restore demo@latest -r "$W/repo" --disk vda -o "$W/restored.raw"
cmp "$W/disk2.raw" "$W/restored.raw" && echo "== restored image is identical to the original"
