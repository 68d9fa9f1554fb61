#!/usr/bin/env bash
# 10 — the base root filesystem: Debian arm64 with systemd, Python, the kernel and the Pi
# firmware, built by mmdebstrap through qemu-user (binfmt). Cached in .cache/image keyed by
# everything that goes into it; the later steps work on a copy, so a warm build skips this.
#
# The kernel's postinst would run mkinitramfs under emulation (21-25 min here, and dpkg
# triggers re-ran it): before the kernel is unpacked, /usr/sbin/mkinitramfs is diverted to
# mkinitramfs.real and a stub that writes an empty file takes its place, so the install makes
# no initramfs at all (update_initramfs=no would not do: it does not stop `update-initramfs -c`).
# Step 20 restores the real one and runs it once, with a short module list, cached.
set -euo pipefail
. "$(dirname "$0")/../env.sh"

key=$(cache_key "$VARIANT" "$SUITE" "$ARCH" "$DEBIAN_MIRROR" "$BASE_PACKAGES" "$BUILD_ONLY_PACKAGES" \
  "$(sha256sum "$IMAGE_DIR/steps/10-base-rootfs.sh" | cut -c1-12)")
base=$CACHE_DIR/base-$key.tar
echo "$base" > "$WORK_DIR/base.path"
if [ -f "$base" ]; then
  log "base rootfs cached: $base"
  exit 0
fi

packages=$(echo $BASE_PACKAGES $BUILD_ONLY_PACKAGES | tr ' ' ',')
case $VARIANT in
  debian)
    sources=("deb $DEBIAN_MIRROR $SUITE main non-free-firmware"
             "deb $DEBIAN_MIRROR $SUITE-updates main non-free-firmware"
             "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main non-free-firmware")
    ;;
  raspios)
    # Untested here (archive unreachable): Raspberry Pi OS = Debian + archive.raspberrypi.com,
    # as rpi-image-gen lays it out. Its keyring must be on the host (raspberrypi-archive-keyring).
    sources=("deb $DEBIAN_MIRROR $SUITE main contrib non-free non-free-firmware"
             "deb $DEBIAN_MIRROR $SUITE-updates main contrib non-free non-free-firmware"
             "deb $DEBIAN_SECURITY_MIRROR $SUITE-security main contrib non-free non-free-firmware"
             "deb [signed-by=/usr/share/keyrings/raspberrypi-archive-keyring.gpg] $RASPIOS_MIRROR $SUITE main")
    packages=$(echo $BASE_PACKAGES $BUILD_ONLY_PACKAGES $RASPIOS_PACKAGES |
      sed 's/linux-image-arm64//' | tr -s ' ' ',')
    ;;
  *) die "VARIANT must be debian or raspios, not $VARIANT" ;;
esac

log "building the $VARIANT $SUITE $ARCH base with mmdebstrap (cold: several minutes)"
start=$(date +%s)
tmp=$CACHE_DIR/base-$key.tmp.tar
# --dpkgopt=force-confold: raspi-firmware ships a conffile that would otherwise prompt.
# The essential hooks run before the kernel and initramfs-tools are unpacked.
mmdebstrap --arch="$ARCH" --variant=minbase --mode=root \
  --include="$packages" \
  --dpkgopt='force-confold' --dpkgopt='force-confdef' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
  --essential-hook='mkdir -p "$1/boot/firmware" && chroot "$1" dpkg-divert --quiet --local --rename --divert /usr/sbin/mkinitramfs.real --add /usr/sbin/mkinitramfs' \
  --essential-hook="cp '$IMAGE_DIR/files/mkinitramfs-stub' \"\$1/usr/sbin/mkinitramfs\" && chmod 755 \"\$1/usr/sbin/mkinitramfs\"" \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer' \
  "$SUITE" "$tmp" "${sources[@]}" >&2
mv "$tmp" "$base"
prune "$CACHE_DIR" base "$base"
log "base rootfs built in $(( $(date +%s) - start )) s: $(du -h "$base" | cut -f1)"
