#!/usr/bin/env bash
# 20 — a fresh copy of the cached base in build/image/rootfs, then the kernel, initramfs and
# the boot partition's firmware files.
#
# The initramfs is made once per kernel version and module list and cached in .cache/image:
# the real mkinitramfs (diverted away in step 10) runs under qemu-user with MODULES=list and
# only the modules needed to reach the root filesystem (SD/eMMC, USB disks, virtio for the
# QEMU test). With Debian's default MODULES=most it spends 20+ minutes in emulated
# `modprobe --show-depends` over every driver; with the list it takes a minute or two. The
# image then gets the real mkinitramfs back with the default configuration, so a kernel
# upgrade on the board (native, seconds) makes a full initramfs as on any Debian system.
#
# raspi-firmware's kernel hook then copies the kernel, the initramfs and the Pi device trees
# to /boot/firmware and writes config.txt and cmdline.txt (root=LABEL=RASPIROOT, see
# files/rootfs/etc/default/raspi-firmware).
set -euo pipefail
. "$(dirname "$0")/../env.sh"

base=$(cat "$WORK_DIR/base.path")
log "unpacking $(basename "$base") into $ROOTFS"
rm -rf "$ROOTFS" && mkdir -p "$ROOTFS"
tar -C "$ROOTFS" -xf "$base"

kver=$(ls "$ROOTFS/lib/modules" | sort -V | tail -1)
[ -n "$kver" ] || die "no kernel in the rootfs"
itver=$(in_root dpkg-query -W -f='${Version}' initramfs-tools-core)
key=$(cache_key "$kver" "$itver" "$INITRAMFS_MODULES" \
  "$(sha256sum "$IMAGE_DIR/steps/20-kernel-initramfs.sh" | cut -c1-12)")
cached=$CACHE_DIR/initrd.img-$kver-$key

# the real mkinitramfs back in place (the stub is only for the package installs of step 10)
if [ -e "$ROOTFS/usr/sbin/mkinitramfs.real" ]; then
  rm -f "$ROOTFS/usr/sbin/mkinitramfs"
  in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/mkinitramfs
fi

if [ ! -s "$cached" ]; then
  log "making the initramfs for $kver once (qemu-user, MODULES=list)"
  start=$(date +%s)
  conf=$ROOTFS/var/tmp/initramfs-conf && rm -rf "$conf" && cp -a "$ROOTFS/etc/initramfs-tools" "$conf"
  sed -i 's/^MODULES=.*/MODULES=list/; s/^COMPRESS=.*/COMPRESS=gzip/' "$conf/initramfs.conf"
  printf '%s\n' $INITRAMFS_MODULES > "$conf/modules"
  in_root mkinitramfs -d /var/tmp/initramfs-conf -o /var/tmp/initrd.img "$kver" >&2
  mv "$ROOTFS/var/tmp/initrd.img" "$cached.tmp" && mv "$cached.tmp" "$cached"
  rm -rf "$conf"
  prune "$CACHE_DIR" "initrd.img" "$cached"
  log "initramfs made in $(( $(date +%s) - start )) s: $(du -h "$cached" | cut -f1)"
else
  log "initramfs cached: $cached"
fi
cp "$cached" "$ROOTFS/boot/initrd.img-$kver"

log "raspi-firmware: kernel, initramfs, device trees, config.txt, cmdline.txt to /boot/firmware"
cp "$IMAGE_DIR/files/rootfs/etc/default/raspi-firmware" "$ROOTFS/etc/default/raspi-firmware"
# (the hook does its work only when called as from a package's postinst: "configure")
in_root env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver" >&2
grep -q "root=LABEL=RASPIROOT" "$ROOTFS/boot/firmware/cmdline.txt" || die "raspi-firmware did not write cmdline.txt"
cmp -s "$cached" "$ROOTFS/boot/firmware/initrd.img-$kver" || die "the boot partition did not get the initramfs"
# Device trees of the boards in $BOARDS only (config.env); the Pi firmware picks its own.
# (Debian variant: Raspberry Pi OS's kernel packages lay out their own, Pi 5 included.)
[ "$VARIANT" = debian ] || exit 0
declare -A dtb=([rpi-3b]=bcm2837-rpi-3-b [rpi-3b-plus]=bcm2837-rpi-3-b-plus
  [rpi-3a-plus]=bcm2837-rpi-3-a-plus [rpi-zero-2-w]=bcm2837-rpi-zero-2-w [rpi-cm3]=bcm2837-rpi-cm3-io3
  [rpi-4]=bcm2711-rpi-4-b [rpi-400]=bcm2711-rpi-400 [rpi-cm4]=bcm2711-rpi-cm4-io)
keep=" "
for board in $BOARDS; do
  [ -n "${dtb[$board]:-}" ] || die "unknown board $board in BOARDS (known: ${!dtb[*]})"
  keep+="${dtb[$board]}.dtb "
done
for f in "$ROOTFS"/boot/firmware/*.dtb; do
  case $keep in *" $(basename "$f") "*) ;; *) rm -f "$f" ;; esac
done
log "boot partition: $(ls "$ROOTFS/boot/firmware" | wc -l) files, device trees for: $BOARDS"
