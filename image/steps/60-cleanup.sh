#!/usr/bin/env bash
# 60 — take out what only the build needed: Ansible and python3-apt, apt's lists and caches,
# the build container's logs and state, SSH host keys (each board makes its own at first boot),
# the machine id (each board gets its own: DHCP client ids derive from it).
set -euo pipefail
. "$(dirname "$0")/../env.sh"

log "purging build-only packages: $BUILD_ONLY_PACKAGES"
# shellcheck disable=SC2086
in_root apt-get purge -y -qq --autoremove $BUILD_ONLY_PACKAGES >"$WORK_DIR/purge.log" 2>&1 ||
  { tail -20 "$WORK_DIR/purge.log" >&2; die "apt-get purge failed"; }
in_root apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/cache/debconf/*-old \
  "$ROOTFS"/var/log/journal/* "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/* \
  "$ROOTFS"/root/.ansible "$ROOTFS"/root/.cache "$ROOTFS"/srv/* \
  "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
  "$ROOTFS"/etc/ssh/ssh_host_* \
  "$ROOTFS"/var/lib/dbus/machine-id "$ROOTFS"/var/lib/systemd/random-seed \
  "$ROOTFS"/var/lib/systemd/timers/* "$ROOTFS"/var/lib/systemd/catalog/database
# anything a started service left (role versions without spyoncino_start_service start it)
rm -rf "${ROOTFS:?}"/var/lib/spyoncino/* "$ROOTFS"/var/lib/spyoncino/.[!.]* "$ROOTFS"/var/lib/private/*
: > "$ROOTFS/etc/machine-id"
find "$ROOTFS/var/log" -type f -exec truncate -s0 {} +
log "rootfs: $(du -sh "$ROOTFS" | cut -f1)"
