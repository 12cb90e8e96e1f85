#!/usr/bin/env bash
# A private system libvirtd for tests (docs/libvirt.md, TESTENV.md option A).
#
#   scripts/libvirt-env.sh start DIR   start a daemon whose state lives in DIR; prints its URI
#   scripts/libvirt-env.sh stop DIR    destroy its domains, SIGTERM it and wait until it is gone
#   scripts/libvirt-env.sh uri DIR     print the URI clients use (qemu+unix:///system?socket=...)
#
# The daemon runs as root in its own mount namespace (unshare): /run/libvirt is a private tmpfs and
# /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt are bind mounts of DIR/*, so
# it shares nothing with a libvirtd that may already run on the machine. QEMU runs as root, logs
# to a file (no virtlogd), without cgroups and without relabelling images.
# Fallback when unshare is impossible (no CAP_SYS_ADMIN): the same daemon without a namespace.
# That only works when no other libvirtd uses /run/libvirt; the script refuses otherwise.
set -euo pipefail

usage() { echo "usage: $0 start|stop|uri DIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
cmd=$1
P=$(realpath -m "$2")
SOCK="$P/sock/libvirt-sock"
URI="qemu+unix:///system?socket=$SOCK"
PIDFILE="$P/run/libvirtd.pid"

pid_alive() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  if pid_alive; then echo "$URI"; return 0; fi
  for t in libvirtd virsh; do
    command -v "$t" >/dev/null 2>&1 || [ -x "/usr/sbin/$t" ] || { echo "libvirt-env: $t not installed (run scripts/setup.sh as root)" >&2; exit 1; }
  done
  [ "$(id -u)" = 0 ] || { echo "libvirt-env: must run as root" >&2; exit 1; }
  mkdir -p "$P"/etc "$P"/lib "$P"/cache "$P"/log "$P"/run "$P"/sock
  chmod 755 "$P"
  cat >"$P/etc/libvirtd.conf" <<CONF
unix_sock_dir = "$P/sock"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$P/log/libvirtd.log"
CONF
  cat >"$P/etc/qemu.conf" <<CONF
cgroup_controllers = [ ]
stdio_handler = "file"
user = "root"
group = "root"
dynamic_ownership = 0
CONF
  rm -f "$SOCK"
  local libvirtd
  libvirtd=$(command -v libvirtd || echo /usr/sbin/libvirtd)
  if unshare --mount --propagation private true 2>/dev/null; then
    echo "namespace" >"$P/run/mode"
    unshare --mount --propagation private sh -ec "
      mkdir -p /run/libvirt /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
      mount -t tmpfs -o mode=755 tmpfs /run/libvirt
      mount --bind '$P/etc' /etc/libvirt
      mount --bind '$P/lib' /var/lib/libvirt
      mount --bind '$P/cache' /var/cache/libvirt
      mount --bind '$P/log' /var/log/libvirt
      exec '$libvirtd' -d -f /etc/libvirt/libvirtd.conf -p '$PIDFILE'"
  else
    if [ -S /run/libvirt/libvirt-sock ] || pgrep -x libvirtd >/dev/null 2>&1; then
      echo "libvirt-env: unshare is not permitted and another libvirtd runs; cannot start a private daemon" >&2
      exit 1
    fi
    echo "libvirt-env: unshare not permitted; starting libvirtd without a private namespace" >&2
    echo "plain" >"$P/run/mode"
    # Without the bind mounts the daemon reads /etc/libvirt/qemu.conf; point it at ours.
    mkdir -p /run/libvirt /var/log/libvirt
    "$libvirtd" -d -f "$P/etc/libvirtd.conf" -p "$PIDFILE"
  fi
  local i
  for i in $(seq 1 300); do
    [ -S "$SOCK" ] && { echo "$URI"; return 0; }
    sleep 0.05
  done
  echo "libvirt-env: libvirtd did not create $SOCK within 15 s; log: $P/log/libvirtd.log" >&2
  tail -n 5 "$P/log/libvirtd.log" >&2 2>/dev/null || true
  exit 1
}

stop() {
  [ -f "$PIDFILE" ] || return 0
  local pid
  pid=$(cat "$PIDFILE")
  if kill -0 "$pid" 2>/dev/null; then
    # SIGTERM does not stop QEMU: destroy every running domain first.
    if [ -S "$SOCK" ]; then
      local d
      for d in $(virsh -q -c "$URI" list --name 2>/dev/null); do
        virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1 || true
      done
    fi
    # Anything left (daemon wedged): kill the QEMU processes by their pid files.
    local run=/proc/$pid/root/run/libvirt/qemu f
    for f in "$run"/*.pid; do
      [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 150); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  uri) echo "$URI" ;;
  *) usage ;;
esac
