#!/usr/bin/env bash
# Starts libvirtd on a machine without systemd, under a prompt child subreaper (Debian's
# `tini -s`), and leaves a libvirtd that already runs that way alone. Idempotent; needs
# root. scripts/setup-host.sh runs it, and so do the tests that restart libvirtd.
#
# Why: QEMU runs as an orphan, re-parented to the nearest subreaper, else to PID 1. libvirt
# reports a domain stopped (the `stopped`/`crashed` lifecycle events, and `virsh destroy`
# returns) only once QEMU's PID is gone, and a zombie still counts. The PID 1 of these
# machines reaps orphans only about every 2 s, which made every destroy or crash reach
# the agent 1.3-2.3 s late. Under tini, a subreaper that reaps at once, it takes
# milliseconds. systemd hosts need none of this: systemd reaps at once (deploy/README.md).
#
# A libvirtd running without the reaper is restarted (domains keep running: libvirtd
# reconnects to them; those started before keep PID 1 as their reaper until they stop).
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "start-libvirtd.sh: run as root" >&2
    exit 1
fi
if ! command -v tini >/dev/null 2>&1; then
    echo "start-libvirtd.sh: tini is not installed: run scripts/setup-host.sh" >&2
    exit 1
fi

# The running libvirtd's PID, if any.
libvirtd_pid() {
    pgrep -x libvirtd | head -n 1
}

# Whether process $1's parent is `tini -s` (a subreaper).
under_reaper() {
    local parent
    parent=$(ps -o ppid= -p "$1" | tr -d ' ')
    [[ -n $parent ]] || return 1
    [[ $(ps -o comm= -p "$parent") == tini ]] || return 1
    tr '\0' ' ' <"/proc/$parent/cmdline" | grep -qE '(^| )-s( |$)'
}

pid=$(libvirtd_pid || true)
if [[ -n $pid ]] && under_reaper "$pid"; then
    exit 0
fi
if [[ -n $pid ]]; then
    echo "start-libvirtd.sh: restarting libvirtd (pid $pid) under a subreaper (tini -s)" >&2
    kill -TERM "$pid"
    for _ in $(seq 1 100); do
        [[ -d /proc/$pid ]] || break
        sleep 0.1
    done
    if [[ -d /proc/$pid ]]; then
        echo "start-libvirtd.sh: libvirtd (pid $pid) did not stop" >&2
        exit 1
    fi
fi

pgrep -x virtlogd >/dev/null || virtlogd -d
mkdir -p /var/log/libvirt
# libvirtd in the foreground (not -d, which would fork away from tini), in a session of its
# own so that nothing the caller's terminal or process group receives reaches it.
setsid --fork tini -s -- libvirtd </dev/null >>/var/log/libvirt/libvirtd-foreground.log 2>&1
for _ in $(seq 1 100); do
    virsh -c qemu:///system version >/dev/null 2>&1 && exit 0
    sleep 0.1
done
echo "start-libvirtd.sh: libvirtd does not answer; see /var/log/libvirt/libvirtd-foreground.log" >&2
exit 1
