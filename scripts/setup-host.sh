#!/usr/bin/env bash
# Installs and starts everything the project needs on a fresh Debian 12 machine:
# libvirt + QEMU (from bookworm-backports, see HOST-SETUP facts in docs), protoc,
# pkg-config, Prometheus (promtool and the server, for the metrics tests), systemd's tools
# (systemd-analyze verifies the units in deploy/systemd/; systemd does not run), the tools
# that build and boot the test image (tests/image/build.sh: fdisk, dosfstools, mtools,
# syslinux; passt and openssh-client to reach the guest), libvirt's network driver with
# dnsmasq (NETWORK=network:NAME, and the tests that define a NAT network), and the Python
# libraries that let tests run Debian's cloud-init code on a seed (tests/cloud-init/).
# Starts libvirtd under a prompt zombie reaper (tini -s, see scripts/start-libvirtd.sh).
# Idempotent: safe to run again. Needs root.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "setup-host.sh: run as root (it installs packages and starts libvirtd)" >&2
    exit 1
fi

# The image ships qemu-utils from bookworm-backports; qemu-system-x86 must come from the
# same suite or apt refuses the mix. Add the suite once.
sources=/etc/apt/sources.list.d/debian.sources
if [[ -f $sources ]]; then
    if ! grep -q 'bookworm-backports' "$sources"; then
        sed -i 's/^Suites: bookworm bookworm-updates$/& bookworm-backports/' "$sources"
    fi
elif ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    # An older-style apt setup: name the suite in a file of its own, with the mirror the
    # machine already uses.
    mirror=$(awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    if [[ -z $mirror ]]; then
        echo "setup-host.sh: cannot find the Debian bookworm apt source to add bookworm-backports to" >&2
        exit 1
    fi
    echo "deb $mirror bookworm-backports main" > /etc/apt/sources.list.d/bookworm-backports.list
fi

need_install=0
for bin in virsh virt-admin libvirtd qemu-system-x86_64 protoc pkg-config qemu-io qemu-img \
    prometheus promtool systemd-analyze pgrep pkill tini setsid; do
    command -v "$bin" >/dev/null 2>&1 || need_install=1
done
[[ -f /usr/include/libvirt/libvirt.h ]] || need_install=1
# The agent keeps VM disks in a libvirt storage pool, and puts VMs on libvirt networks: the
# storage and network drivers are packages of their own (the network driver runs dnsmasq).
[[ -f /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_storage.so ]] || need_install=1
[[ -f /usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_network.so ]] || need_install=1
command -v dnsmasq >/dev/null 2>&1 || need_install=1

if [[ $need_install -eq 1 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # systemd: only for `systemd-analyze verify` of the units. From the same suite as
    # libvirt, which pulls in that suite's libsystemd0.
    apt-get install -y -q --no-install-recommends -t bookworm-backports \
        libvirt-dev libvirt-clients libvirt-daemon libvirt-daemon-driver-qemu \
        libvirt-daemon-driver-storage libvirt-daemon-driver-network dnsmasq-base \
        qemu-system-x86 qemu-utils pkg-config \
        systemd
    # prometheus: the metrics tests run promtool and a real Prometheus server.
    apt-get install -y -q --no-install-recommends protobuf-compiler procps prometheus
    # tini: reaps QEMU's zombies at once on machines whose PID 1 does not (start-libvirtd.sh).
    apt-get install -y -q --no-install-recommends tini util-linux
fi

# The test image (tests/image/build.sh) and the tests that boot it: image build tools,
# passt (libvirt's user-mode NIC with loopback port forwards), an SSH client, and the
# libraries cloud-init's Python code imports (the package itself is unpacked by the tests,
# never installed: on a host that boots with systemd it would reconfigure the host).
need_image_tools=0
for bin in sfdisk mkfs.vfat mcopy mtype syslinux passt ssh ssh-keygen gzip; do
    command -v "$bin" >/dev/null 2>&1 || need_image_tools=1
done
[[ -f /usr/lib/syslinux/mbr/mbr.bin ]] || need_image_tools=1
/usr/bin/python3 -c 'import yaml, jsonpatch, jinja2, requests' >/dev/null 2>&1 || need_image_tools=1
if [[ $need_image_tools -eq 1 ]]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends \
        fdisk dosfstools mtools syslinux syslinux-common gzip passt openssh-client \
        python3 python3-yaml python3-jsonpatch python3-jinja2 python3-requests
fi

# PostgreSQL: the coordinator's tests run a second time on it, and the two-coordinator tests
# share one (scripts/start-postgres.sh starts a throw-away server on loopback; the package's
# own default cluster, if it started one, is not used).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends postgresql
fi

# The API check (scripts/api-check.sh) installs its pinned Python tools into a virtualenv.
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3-venv
fi

# Without these owner/mode bits libvirt re-probes QEMU on every define (about 52 s each).
if [[ -e /dev/kvm ]]; then
    getent group kvm >/dev/null || groupadd --system kvm
    chown root:kvm /dev/kvm
    chmod 0660 /dev/kvm
fi

# A libvirtd started before the storage or network driver was installed answers, but has
# no pools or no networks: stop it so that it starts again below with the drivers.
if virsh -c qemu:///system version >/dev/null 2>&1 \
    && { ! virsh -c qemu:///system pool-list --all >/dev/null 2>&1 \
        || ! virsh -c qemu:///system net-list --all >/dev/null 2>&1; }; then
    echo "setup-host.sh: restarting libvirtd to load the storage and network drivers" >&2
    pid=$(pgrep -x libvirtd | head -n 1 || true)
    if [[ -n $pid ]]; then
        kill -TERM "$pid"
        for _ in $(seq 1 50); do [[ -d /proc/$pid ]] || break; sleep 0.1; done
    fi
fi

# There is no systemd as PID 1 on these machines: start virtlogd and libvirtd by hand,
# libvirtd under a subreaper that reaps QEMU's zombies at once (PID 1 here takes ~2 s, and
# libvirt reports a destroyed or crashed domain only once its QEMU is reaped). A libvirtd
# already running that way is left alone; one running without it is restarted.
"$(dirname "$0")/start-libvirtd.sh"
virsh -c qemu:///system version
virsh -c qemu:///system pool-list --all >/dev/null
virsh -c qemu:///system net-list --all >/dev/null
