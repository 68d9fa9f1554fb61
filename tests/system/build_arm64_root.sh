#!/usr/bin/env bash
# An arm64 Debian bookworm root with python3 and python3-venv, for the Pi import test
# (tests/system/test_arm64_imports.py). Built once by mmdebstrap through qemu-user (binfmt) and
# cached in .cache/arm64 keyed by the package list; prints ROOTFS=<path>. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${ARM64_CACHE:-$repo/.cache/arm64}
suite=bookworm
packages=python3,python3-venv

log() { printf 'build_arm64_root: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "needs root (mmdebstrap, chroot)"; exit 2; }
command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing (apt-get install mmdebstrap)"; exit 2; }
# arm64 binaries run through qemu-user: mount binfmt_misc and enable the handler if need be
# (as image/build.sh does), or say what is missing (exit 3: the test skips with that line)
if ! grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  command -v update-binfmts >/dev/null && update-binfmts --enable qemu-aarch64 2>/dev/null || true
fi
grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || { log "no qemu-aarch64 binfmt handler: apt-get install qemu-user-static binfmt-support"; exit 3; }
mkdir -p "$cache"

# shellcheck source=tests/system/cached_root.sh
. "$here/cached_root.sh"
cached_root "$cache" "$suite $packages arm64 v1" usr/bin/python3 \
  --architectures=arm64 --variant=minbase --include="$packages" "$suite"
echo "ROOTFS=$rootfs"
