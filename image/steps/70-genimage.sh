#!/usr/bin/env bash
# 70 — the partitioned image, without loop devices or mounts: the FAT32 boot partition made
# with mkfs.vfat + mtools from /boot/firmware, the ext4 root made with `mke2fs -d` from the
# rootfs, both put into an MBR disk image by genimage (partitions aligned to 4 MiB, as SD
# cards like). Labels RASPIFIRM / RASPIROOT are what fstab and cmdline.txt (root=LABEL=) use.
set -euo pipefail
. "$(dirname "$0")/../env.sh"

out=$WORK_DIR/out && rm -rf "$out" && mkdir -p "$out"
[ -n "$(ls -A "$ROOTFS/boot/firmware")" ] || die "/boot/firmware is empty (step 20 did not run?)"

log "boot partition: FAT32, $BOOT_SIZE_MB MiB"
mkfs.vfat -F 32 -n RASPIFIRM -C "$out/boot.vfat" $(( BOOT_SIZE_MB * 1024 )) >/dev/null
mcopy -i "$out/boot.vfat" -s -p -m "$ROOTFS"/boot/firmware/* ::/

# the root filesystem without the boot partition's files (its mount point stays, empty)
used_mb=$(du -sm --exclude=./boot/firmware "$ROOTFS" | cut -f1)
root_mb=$(( used_mb * 115 / 100 + ROOT_SLACK_MB ))
log "root partition: ext4, $root_mb MiB ($used_mb MiB used)"
excl=$WORK_DIR/bootfw.moved && rm -rf "$excl" && mkdir -p "$excl"
mv "$ROOTFS"/boot/firmware/* "$excl"/
mke2fs -q -t ext4 -L RASPIROOT -m 2 -E root_owner=0:0 -d "$ROOTFS" "$out/root.ext4" "${root_mb}M"
mv "$excl"/* "$ROOTFS"/boot/firmware/ && rmdir "$excl"

cat > "$WORK_DIR/genimage.cfg" <<CFG
image spyoncino.img {
  hdimage {
    partition-table-type = "mbr"
    align = 4M
  }
  partition boot {
    partition-type = 0xC
    bootable = true
    image = "boot.vfat"
  }
  partition root {
    partition-type = 0x83
    image = "root.ext4"
  }
}
CFG
tmp=$WORK_DIR/genimage.tmp && rm -rf "$tmp"
empty=$WORK_DIR/genimage.root && rm -rf "$empty" && mkdir -p "$empty"
genimage --config "$WORK_DIR/genimage.cfg" --inputpath "$out" --outputpath "$out" \
  --tmppath "$tmp" --rootpath "$empty" >"$WORK_DIR/genimage.log" 2>&1 ||
  { tail -20 "$WORK_DIR/genimage.log" >&2; die "genimage failed"; }
rm -rf "$tmp" "$empty"
mv "$out/spyoncino.img" "$WORK_DIR/spyoncino.img"
rm -f "$out/root.ext4"
log "image: $WORK_DIR/spyoncino.img ($(du -h --apparent-size "$WORK_DIR/spyoncino.img" | cut -f1))"
