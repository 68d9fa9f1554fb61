#!/usr/bin/env bash
# 30 — what the role installs offline: the project's wheel (built from the checkout) and a
# wheelhouse of every dependency for aarch64 / CPython $PY_VERSION, downloaded on the host
# (no emulation) and cached keyed by the wheel's dependency list. sdnotify is published as an
# sdist only, so its wheel is built here (it is pure Python). ai-edge-litert 2.x is tagged
# manylinux_2_27, hence the list of platforms.
set -euo pipefail
. "$(dirname "$0")/../env.sh"

python=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$python" ] || python=python3
wheel=$(bash "$IMAGE_DIR/build-wheel.sh" "$WORK_DIR/dist")
log "wheel: $wheel"

deps=$("$python" - "$wheel" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
print("\n".join(sorted(l for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:"))))
PY
)
key=$(cache_key "$deps" "$PIP_EXTRAS" "$PY_VERSION" "$WHEEL_PLATFORMS" v1)
wheelhouse=$CACHE_DIR/wheelhouse-$key
echo "$wheelhouse" > "$WORK_DIR/wheelhouse.path"
if [ -f "$wheelhouse/.complete" ]; then
  log "wheelhouse cached: $wheelhouse"
  exit 0
fi
log "filling $wheelhouse"
rm -rf "$wheelhouse" && mkdir -p "$wheelhouse"
"$python" -m pip wheel -q --no-deps -w "$wheelhouse" "sdnotify>=0.3.2" >&2
platforms=()
for p in $WHEEL_PLATFORMS; do platforms+=(--platform "$p"); done
req=$(basename "$wheel" | cut -d- -f1)
[ -n "$PIP_EXTRAS" ] && req="$req[$PIP_EXTRAS]"
"$python" -m pip download -q -d "$wheelhouse" --find-links "$wheelhouse" --find-links "$(dirname "$wheel")" \
  --only-binary=:all: "${platforms[@]}" --python-version "$PY_VERSION" \
  --implementation cp --abi "cp${PY_VERSION/./}" "$req" >&2
rm -f "$wheelhouse"/spyoncino-*.whl
touch "$wheelhouse/.complete"
prune "$CACHE_DIR" wheelhouse "$wheelhouse"
log "wheelhouse: $(du -sh "$wheelhouse" | cut -f1), $(ls "$wheelhouse"/*.whl | wc -l) wheels"
