#!/usr/bin/env bash
# `make image`: run the numbered steps in order (image/steps/NN-*.sh), timing each.
# As root on Debian x86-64 with mmdebstrap, qemu-user-static, binfmt-support, systemd-container,
# genimage, dosfstools, mtools, e2fsprogs, xz-utils. See image/README.md.
# `image/build.sh 40 50` runs only the steps whose number is given (for working on one step).
set -euo pipefail
. "$(dirname "$0")/env.sh"

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap, systemd-nspawn, file ownership in the image)"
for tool in mmdebstrap systemd-nspawn genimage mkfs.vfat mcopy mke2fs xz qemu-aarch64-static; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install mmdebstrap systemd-container qemu-user-static binfmt-support genimage dosfstools mtools e2fsprogs xz-utils"
done
# arm64 binaries run through qemu-user: binfmt_misc must be mounted and the handler enabled
if [ "$(uname -m)" != aarch64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
  grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "the qemu-aarch64 binfmt handler is not enabled"
fi

total=$(date +%s)
for step in "$IMAGE_DIR"/steps/[0-9][0-9]-*.sh; do
  n=$(basename "$step" | cut -c1-2)
  if [ $# -gt 0 ] && ! printf '%s\n' "$@" | grep -qx "$n"; then continue; fi
  start=$(date +%s)
  log "== $(basename "$step")"
  bash "$step"
  log "== $(basename "$step") took $(( $(date +%s) - start )) s"
done
log "done in $(( $(date +%s) - total )) s"
