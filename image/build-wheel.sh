#!/usr/bin/env bash
# build-wheel.sh DEST: the project's wheel, built from the files git knows about (tracked or
# new, not ignored), into DEST (emptied first). Prints the wheel's path. Used by the image
# build (steps/30-wheels.sh) and by tests/system/build_rootfs.sh (step 2).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=$1
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) |
  (cd "$repo" && xargs -0 cp --parents -t "$src" 2>/dev/null || true)
rm -rf "$dest" && mkdir -p "$dest"
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "$src" >&2
ls "$dest"/spyoncino-*.whl
