# Sourced by build_rootfs.sh and build_arm64_root.sh: one cached mmdebstrap root per package list.
#
# cached_root CACHE KEY_TEXT PROOF MMDEBSTRAP_ARGS... (the last of them the suite)
# sets $rootfs to CACHE/rootfs-<sha256 of KEY_TEXT, 12 hex>. When PROOF (a path inside the root)
# is not there, the root is built into rootfs-<key>.tmp and renamed only once mmdebstrap has
# finished, so an interrupted build is never taken for a cached one; older roots in CACHE are
# then removed. Logs through the caller's log().
cached_root() {
  local cache=$1 keytext=$2 proof=$3 key start old
  shift 3
  key=$(printf '%s' "$keytext" | sha256sum | cut -c1-12)
  rootfs=$cache/rootfs-$key
  if [ -x "$rootfs/$proof" ]; then
    log "rootfs cached: $rootfs"
    return
  fi
  log "building $rootfs with mmdebstrap"
  start=$(date +%s)
  rm -rf "$rootfs.tmp"
  mmdebstrap "$@" "$rootfs.tmp" >&2
  mv "$rootfs.tmp" "$rootfs"
  for old in "$cache"/rootfs-*; do
    [ "$old" = "$rootfs" ] || rm -rf "$old"
  done
  log "rootfs built in $(( $(date +%s) - start )) s ($(du -sh "$rootfs" | cut -f1))"
}
