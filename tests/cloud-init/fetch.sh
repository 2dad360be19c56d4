#!/usr/bin/env bash
# Unpacks Debian's cloud-init package (never installs it: a stray cloud-init on a host that
# boots with systemd would reconfigure that host) and prints the directory that holds its
# Python package, for tests that check seeds against cloud-init's own code:
#
#   PYTHONPATH=$(tests/cloud-init/fetch.sh) /usr/bin/python3 tests/cloud-init/read-seed.py DIR
#
# From the machine's configured Debian apt sources only; cached under
# ${VMM_TEST_IMAGE_DIR:-<workspace>/target/test-image}/cloud-init/<version>/. Its Python
# dependencies are Debian packages scripts/setup-host.sh installs (python3-yaml,
# python3-jsonpatch, python3-jinja2, python3-requests).
set -euo pipefail

workspace=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${VMM_TEST_IMAGE_DIR:-${CARGO_TARGET_DIR:-$workspace/target}/test-image}/cloud-init
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9

candidate() {
    apt-cache policy cloud-init 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2 }'
}
version=$(candidate)
# A machine whose packages are all installed may have had apt's package lists removed
# (scripts/setup-host.sh then has no reason to update them): fetch them, as root.
if [[ -z $version && $(id -u) -eq 0 ]]; then
    echo "fetch.sh: apt knows no candidate for cloud-init: running apt-get update" >&2
    apt-get update -q >&2
    version=$(candidate)
fi
if [[ -z $version ]]; then
    echo "fetch.sh: apt has no candidate for cloud-init (run 'apt-get update' as root; check the Debian apt sources)" >&2
    exit 1
fi
dir=$cache/${version//[^A-Za-z0-9.+~-]/_}
if [[ ! -d $dir/usr/lib/python3/dist-packages/cloudinit ]]; then
    work=$(mktemp -d "$cache/fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "cloud-init=$version" >&2)
    dpkg-deb -x "$work"/cloud-init_*.deb "$work/unpacked"
    rm -rf "$dir"
    mv "$work/unpacked" "$dir"
fi
echo "$dir/usr/lib/python3/dist-packages"
