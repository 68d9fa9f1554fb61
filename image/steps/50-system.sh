#!/usr/bin/env bash
# 50 — what makes the provisioned rootfs an appliance: the first-boot unit and script, SD-card
# wear settings (journald in RAM, noatime, /tmp on tmpfs), networking (networkd DHCP on wired
# and Wi-Fi, resolved, avahi for <hostname>.local), the boot partition's settings folder. Done
# after the role, not before: the fstab below would make the nspawn boot wait for partitions.
set -euo pipefail
. "$(dirname "$0")/../env.sh"

log "installing the image's files into the rootfs"
cp -rT --no-preserve=ownership "$IMAGE_DIR/files/rootfs" "$ROOTFS"
chmod 0755 "$ROOTFS/usr/local/sbin/spyoncino-firstboot"
sed -i "s/^HOSTNAME_PREFIX = .*/HOSTNAME_PREFIX = os.environ.get(\"SPYONCINO_HOSTNAME_PREFIX\", \"$HOSTNAME_PREFIX\")/;
        s|^PASSWORD_FILE = .*|PASSWORD_FILE = BOOT / \"$PASSWORD_FILE_NAME\"|" \
  "$ROOTFS/usr/local/sbin/spyoncino-firstboot"

echo "$HOSTNAME_PREFIX" > "$ROOTFS/etc/hostname"
[ -s "$ROOTFS/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t%s\n' \
  "$HOSTNAME_PREFIX" > "$ROOTFS/etc/hosts"
ln -sf /run/systemd/resolve/stub-resolv.conf "$ROOTFS/etc/resolv.conf"

# Units: systemctl enable/disable/mask only edit symlinks, so they run in the chroot as is.
in_root systemctl enable spyoncino-firstboot.service systemd-networkd.service \
  systemd-resolved.service systemd-timesyncd.service avahi-daemon.service >/dev/null 2>&1
# SSH stays off unless the owner asks for it (custom.toml, or an empty file named ssh);
# systemd-firstboot would prompt on the console of a headless box; nothing here needs apt's
# timers or a getty on the HDMI console's unused VTs.
in_root systemctl disable ssh.service >/dev/null 2>&1 || true
in_root systemctl mask systemd-firstboot.service >/dev/null 2>&1
# First boot applies the presets (an empty machine-id); these keep SSH off then too.
mkdir -p "$ROOTFS/etc/systemd/system-preset"
cat > "$ROOTFS/etc/systemd/system-preset/10-spyoncino-image.preset" <<'PRESET'
# Spyoncino image: the first boot applies presets (enable only); SSH stays as built (off).
disable ssh.service
disable ssh.socket
enable spyoncino.service
enable spyoncino-firstboot.service
PRESET

# An upgraded kernel on the board must get its initramfs (made natively there, in seconds):
# undo the build-time switch of step 10.
printf 'update_initramfs=yes\n' > "$ROOTFS/etc/initramfs-tools/update-initramfs.conf"

# The settings folder on the boot partition, with the commented examples.
mkdir -p "$ROOTFS/boot/firmware/spyoncino"
cp "$IMAGE_DIR"/files/boot/spyoncino/* "$ROOTFS/boot/firmware/spyoncino/"
