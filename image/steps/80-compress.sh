#!/usr/bin/env bash
# 80 — dist/spyoncino-<version>-rpi-arm64.img.xz and its .sha256 (xz on every core; Raspberry
# Pi Imager and `xz -dc | dd` both read it). The uncompressed image stays in build/image for
# `make test-image`.
set -euo pipefail
. "$(dirname "$0")/../env.sh"

version=$(basename "$(ls "$WORK_DIR"/dist/spyoncino-*.whl)" | cut -d- -f2)
suffix=rpi-arm64
[ "$VARIANT" = raspios ] && suffix=raspios-arm64
name=spyoncino-$version-$suffix.img.xz
mkdir -p "$DIST_DIR"
start=$(date +%s)
# shellcheck disable=SC2086
xz $XZ_OPTS -c "$WORK_DIR/spyoncino.img" > "$DIST_DIR/$name.tmp"
mv "$DIST_DIR/$name.tmp" "$DIST_DIR/$name"
(cd "$DIST_DIR" && sha256sum "$name" > "$name.sha256")
echo "$DIST_DIR/$name" > "$WORK_DIR/dist.path"
log "$DIST_DIR/$name: $(du -h "$DIST_DIR/$name" | cut -f1) (xz in $(( $(date +%s) - start )) s)"
