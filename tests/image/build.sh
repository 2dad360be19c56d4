#!/usr/bin/env bash
# Builds the test image: a small bootable x86-64 disk made from Debian packages only, for
# the tests that boot a real guest (see tests/image/README.md for what the guest does).
#
#   tests/image/build.sh            # prints the path of the compressed qcow2 on stdout
#
# The disk: an MBR (syslinux's mbr.bin) and one FAT partition holding SYSLINUX, Debian's
# cloud kernel and an initramfs (busybox-static, dropbear and the libraries it needs, a few
# kernel modules, and the files under tests/image/rootfs/). The guest runs from the
# initramfs; it boots from its disk like any cloud image (BIOS, MBR, SYSLINUX), with no
# direct kernel boot.
#
# Every guest file comes from Debian packages fetched with `apt-get download` from the
# machine's configured apt sources (checked against the signed archive indexes by apt),
# unpacked with `dpkg-deb -x`, never installed. Nothing is downloaded from anywhere else.
#
# Cached under ${VMM_TEST_IMAGE_DIR:-<workspace>/target/test-image}: the .debs in debs/, the
# image in <key>/, where <key> hashes this script, every other file under tests/image/ but
# the README, and the exact versions of the packages used. A second run with nothing
# changed only checks the key (a tenth of a second) and prints the cached path. Concurrent
# runs wait for one another (flock). Needs no root unless apt's package lists are missing
# (then it runs `apt-get update`). Host tools: apt, dpkg-deb, sfdisk (fdisk), mkfs.vfat
# (dosfstools), mcopy (mtools), syslinux + syslinux-common, qemu-img (qemu-utils), gzip,
# sha256sum; scripts/setup-host.sh installs them.
set -euo pipefail

image_src=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
workspace=$(cd "$image_src/../.." && pwd)
cache=${VMM_TEST_IMAGE_DIR:-${CARGO_TARGET_DIR:-$workspace/target}/test-image}

# The guest's packages. The kernel meta-package is resolved to the versioned image package
# it depends on. dropbear-bin is dynamically linked: its libraries are listed here and
# checked below (a missing one fails the build, naming it).
KERNEL_META=linux-image-cloud-amd64
PACKAGES=(busybox-static dropbear-bin libc6 libcrypt1 libtomcrypt1 libtommath1 libgmp10 zlib1g)
# Kernel modules the init loads (their dependencies are added): virtio disks and NIC, the
# IDE CD-ROM of the `pc` machine type (the cloud kernel has no AHCI), virtio-scsi, the seed's
# file systems (VFAT and ISO 9660) with their code pages, the ACPI power button (so a
# graceful shutdown request powers the guest off) and the virtio RNG.
MODULES=(virtio_pci virtio_blk virtio_net virtio_scsi virtio_rng ata_piix sd_mod sr_mod
    vfat nls_cp437 nls_ascii nls_utf8 isofs button evdev)
# The disk: 1 MiB for the MBR and alignment, then the FAT partition.
DISK_MIB=64
PART_START_SECTOR=2048
KERNEL_CMDLINE="console=ttyS0,115200 panic=10"

say() { echo "build.sh: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in apt-get apt-cache dpkg-deb sfdisk mkfs.vfat mcopy syslinux qemu-img gzip sha256sum flock; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool is missing; run scripts/setup-host.sh (as root) to install the image build tools"
done
mbr_bin=/usr/lib/syslinux/mbr/mbr.bin
[[ -f $mbr_bin ]] || die "$mbr_bin is missing (Debian package syslinux-common); run scripts/setup-host.sh"

mkdir -p "$cache/debs"
exec 9>"$cache/.lock"
flock 9

# Candidate versions: "name version" lines for the packages named.
candidates() {
    apt-cache policy "$@" 2>/dev/null | awk '
        /^[^ ].*:$/ { name = substr($0, 1, length($0) - 1) }
        $1 == "Candidate:" { print name, $2 }'
}

# name=version for every package, the kernel meta-package resolved.
resolve_packages() {
    local meta_version kernel_pkg name version count=0
    meta_version=$(candidates "$KERNEL_META" | awk '{ print $2 }')
    [[ -n $meta_version && $meta_version != "(none)" ]] || return 1
    kernel_pkg=$(apt-cache show --no-all-versions "$KERNEL_META=$meta_version" \
        | sed -n 's/^Depends: //p' | tr ',' '\n' | grep -o 'linux-image-[0-9][^ ]*' | head -n 1)
    [[ -n $kernel_pkg ]] || return 1
    while read -r name version; do
        [[ -n $version && $version != "(none)" ]] || return 1
        echo "$name=$version"
        count=$((count + 1))
    done < <(candidates "$kernel_pkg" "${PACKAGES[@]}")
    [[ $count -eq $((${#PACKAGES[@]} + 1)) ]]
}

# Resolving takes apt a few seconds; the answer changes only with apt's lists or settings,
# so it is kept with a stamp of those.
apt_stamp=$(
    {
        find /var/lib/apt/lists /etc/apt -maxdepth 2 -type f -printf '%p %s %T@\n' 2>/dev/null
        echo "$KERNEL_META ${PACKAGES[*]}"
    } | LC_ALL=C sort | sha256sum | cut -c1-16
)
resolved=""
if [[ -f $cache/resolved && $(head -n 1 "$cache/resolved") == "$apt_stamp" ]]; then
    resolved=$(tail -n +2 "$cache/resolved")
fi
if [[ -z $resolved ]] && ! resolved=$(resolve_packages); then
    if [[ $(id -u) -eq 0 ]]; then
        say "apt knows no candidate for some packages: running apt-get update"
        apt-get update -q >&2
        resolved=$(resolve_packages) \
            || die "apt has no candidate for $KERNEL_META or one of: ${PACKAGES[*]} (check the Debian apt sources)"
        apt_stamp=""
    else
        die "apt has no candidate for $KERNEL_META or one of: ${PACKAGES[*]}; run 'apt-get update' as root"
    fi
fi
[[ -z $apt_stamp ]] || printf '%s\n%s\n' "$apt_stamp" "$resolved" >"$cache/resolved"

# The key: this directory's files but its docs (names, modes and contents), the packages,
# the host's syslinux (it writes the boot sector and ldlinux.sys) and the build settings.
key=$(
    cd "$image_src"
    {
        find . -type f ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        find . -type f ! -name '*.md' -perm -u+x -print0 | LC_ALL=C sort -z \
            | xargs -0 -r printf 'exec %s\n'
        echo "$resolved"
        dpkg-query -W -f '${Package}=${Version}\n' syslinux syslinux-common 2>/dev/null || true
        echo "${MODULES[*]} $DISK_MIB $PART_START_SECTOR $KERNEL_CMDLINE"
    } | sha256sum | cut -c1-16
)
out_dir=$cache/$key
image=$out_dir/test-image.qcow2
if [[ -f $image && -f $image.sha256 ]]; then
    say "cached: $image"
    echo "$image"
    exit 0
fi

started=$(date +%s%N)
say "building the test image ($key)"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# Fetch (or reuse) each .deb. apt checks every download against the signed archive
# indexes; the size and SHA-256 it reports are checked again here for cached files.
debs=()
while IFS= read -r spec; do
    line=$(apt-get download --print-uris "$spec" 2>/dev/null | head -n 1)
    file=$(awk '{ print $2 }' <<<"$line")
    sha=$(awk '{ sub(/^SHA256:/, "", $4); print $4 }' <<<"$line")
    [[ -n $file && -n $sha ]] || die "apt gives no download for $spec"
    if [[ -f $cache/debs/$file ]] && echo "$sha  $cache/debs/$file" | sha256sum -c --status; then
        :
    else
        say "downloading $spec"
        (cd "$work" && apt-get download -q -o APT::Sandbox::User=root "$spec" >&2)
        echo "$sha  $work/$file" | sha256sum -c --status || die "$file does not match its SHA-256"
        mv "$work/$file" "$cache/debs/$file"
    fi
    debs+=("$cache/debs/$file")
done <<<"$resolved"

unpacked=$work/unpacked
root=$work/initramfs
mkdir -p "$unpacked" "$root"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$unpacked"
done
busybox=$unpacked/bin/busybox
[[ -x $busybox ]] || die "busybox-static did not provide /bin/busybox"

# busybox and its applet links.
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin"
cp "$busybox" "$root/bin/busybox"
while IFS= read -r applet; do
    [[ -e $root/$applet ]] || ln -s /bin/busybox "$root/$applet"
done < <("$busybox" --list-full)

# dropbear and the shared libraries it needs, found with the guest's own dynamic loader.
cp "$unpacked/usr/sbin/dropbear" "$root/usr/sbin/"
cp "$unpacked/usr/bin/dropbearkey" "$root/usr/bin/"
loader=$unpacked/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
libpath=$unpacked/lib/x86_64-linux-gnu:$unpacked/usr/lib/x86_64-linux-gnu
needed=$("$loader" --library-path "$libpath" --list "$unpacked/usr/sbin/dropbear")
if grep -q 'not found' <<<"$needed"; then
    die "dropbear needs libraries no listed package provides:"$'\n'"$needed"
fi
mkdir -p "$root/lib/x86_64-linux-gnu" "$root/usr/lib/x86_64-linux-gnu" "$root/lib64"
while read -r lib; do
    rel=${lib#"$unpacked"/}
    cp -L "$lib" "$root/$rel"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 }' <<<"$needed")
ln -s /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 "$root/lib64/ld-linux-x86-64.so.2"

# Kernel modules: the ones named above and what they depend on (busybox's depmod reads
# the unpacked tree; it runs on the build host, being static).
kernel=$(find "$unpacked/boot" -name 'vmlinuz-*' | head -n 1)
[[ -n $kernel ]] || die "the kernel package has no /boot/vmlinuz-*"
kver=${kernel##*/vmlinuz-}
"$busybox" depmod -b "$unpacked" "$kver"
moddir=lib/modules/$kver
want=$(for m in "${MODULES[@]}"; do
    line=$(grep -E "/${m//_/[-_]}\\.ko(\\.[a-z]+)?:" "$unpacked/$moddir/modules.dep") \
        || die "the kernel has no module $m"
    tr -d ':' <<<"$line" | tr ' ' '\n'
done | sort -u)
for mod in $want; do
    mkdir -p "$root/$moddir/$(dirname "$mod")"
    cp "$unpacked/$moddir/$mod" "$root/$moddir/$mod"
done
cp "$unpacked/$moddir/modules.order" "$unpacked/$moddir/modules.builtin" "$root/$moddir/"
"$busybox" depmod -b "$root" "$kver"

# The files of this directory's rootfs/ (the init, inittab, DHCP hook...), and the list of
# modules the init loads.
cp -a "$image_src/rootfs/." "$root/"
printf '%s\n' "${MODULES[@]}" >"$root/etc/modules"
mkdir -p "$root/dev" "$root/proc" "$root/sys" "$root/run" "$root/tmp" "$root/var/log" \
    "$root/mnt/seed" "$root/root"
chmod 0700 "$root/root"
chmod 1777 "$root/tmp"
chmod 0600 "$root/etc/shadow"

(cd "$root" && find . | LC_ALL=C sort | "$busybox" cpio -o -H newc -R 0:0 2>/dev/null) \
    | gzip -9 -n >"$work/initrd.img"

# The disk: MBR + one bootable FAT partition with SYSLINUX, the kernel and the initramfs.
disk=$work/disk.raw
truncate -s "${DISK_MIB}M" "$disk"
echo "start=$PART_START_SECTOR, type=e, bootable" | sfdisk -q --label dos "$disk" >&2
mkfs.vfat -F 16 -n VMMTEST -h "$PART_START_SECTOR" --offset "$PART_START_SECTOR" "$disk" >/dev/null
cat >"$work/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.img
  APPEND $KERNEL_CMDLINE
EOF
cp "$kernel" "$work/vmlinuz"
offset=$((PART_START_SECTOR * 512))
mcopy -i "$disk@@$offset" "$work/vmlinuz" "$work/initrd.img" "$work/syslinux.cfg" ::/
syslinux --install --offset "$offset" "$disk"
dd if="$mbr_bin" of="$disk" bs=440 count=1 conv=notrunc status=none

mkdir -p "$work/out"
qemu-img convert -q -c -f raw -O qcow2 "$disk" "$work/out/test-image.qcow2"
(cd "$work/out" && sha256sum test-image.qcow2 >test-image.qcow2.sha256)
{
    echo "key $key"
    echo "kernel $kver"
    echo "$resolved"
} >"$work/out/packages.txt"

# Publish atomically, then drop older images and .debs no longer used.
rm -rf "$out_dir"
mv "$work/out" "$out_dir"
for old in "$cache"/*/; do
    old=${old%/}
    if [[ ${old##*/} =~ ^[0-9a-f]{16}$ && $old != "$out_dir" ]]; then rm -rf "$old"; fi
done
for deb in "$cache"/debs/*.deb; do
    keep=0
    for used in "${debs[@]}"; do if [[ $deb == "$used" ]]; then keep=1; fi; done
    [[ $keep -eq 1 ]] || rm -f "$deb"
done

elapsed_ms=$((($(date +%s%N) - started) / 1000000))
say "built $image ($(stat -c %s "$image") bytes) in $((elapsed_ms / 1000)).$(printf '%03d' $((elapsed_ms % 1000)))s"
echo "$image"
