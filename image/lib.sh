# Helpers every step sources (after config.env). Not executable on its own.
log() { printf 'image: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }
# cache_key WORDS...: a short stable hash naming a cache entry after what it was built from.
cache_key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }
# in_root CMD...: run a command inside the (arm64) root filesystem via qemu-user binfmt, in a
# throwaway systemd-nspawn (it mounts /proc, /sys and /dev, which a bare chroot lacks).
# Nothing run this way loads LiteRT, so the arm64 cpuinfo of step 40 is not needed (nspawn
# 252 cannot bind a file over /proc/cpuinfo without -b anyway).
in_root() {
  systemd-nspawn -q --register=no --keep-unit --private-network --pipe -D "$ROOTFS" \
    /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 HOME=/root \
    DEBIAN_FRONTEND=noninteractive "$@" </dev/null
}
# Cleanup of the newest-but-one entries of a cache folder.
prune() { # prune DIR PREFIX KEEP
  local d
  for d in "$1/$2"-*; do [ "$d" = "$3" ] || rm -rf "$d"; done
}
