#!/usr/bin/env bash
# Prepare what the real-systemd tests boot (tests/system/test_nspawn.py), cached between runs:
#
#   1. a minimal Debian bookworm x86-64 root filesystem with systemd, python3, ansible-core
#      (mmdebstrap, about 30 s; rebuilt only when the package list below changes);
#   2. the project's wheel, built from the working tree (pip wheel --no-deps);
#   3. a wheelhouse with every dependency of that wheel and of the role's default extras
#      (mqtt), so the container installs offline
#      (rebuilt only when the wheel's dependencies change; pip's own cache makes it quick).
#
# The Ansible role then installs the wheel inside the booted container exactly as on a board.
# Prints KEY=VALUE lines (ROOTFS, WHEEL, WHEELHOUSE) for the test to read. Needs root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${ROOTFS_CACHE:-$repo/.cache/system}
python=${PYTHON:-$repo/.venv/bin/python}
[ -x "$python" ] || python=python3
suite=bookworm
# ansible-core runs the role inside the container (local connection): the booted container is
# the target, so the systemd tasks talk to a real PID 1. python3-apt serves Ansible's apt module.
packages=systemd,systemd-sysv,dbus,python3,python3-venv,python3-setuptools,python3-apt,ca-certificates,iproute2,curl,ansible-core

log() { printf 'build_rootfs: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  log "needs root (mmdebstrap and systemd-nspawn)"; exit 2
fi
for tool in mmdebstrap systemd-nspawn; do
  command -v "$tool" >/dev/null || { log "$tool is missing (apt-get install mmdebstrap systemd-container)"; exit 2; }
done
mkdir -p "$cache"

# -- 1. root filesystem ---------------------------------------------------------------------
# apt's timers would reach for the network at boot; nothing in the test needs them.
# shellcheck source=tests/system/cached_root.sh
. "$here/cached_root.sh"
cached_root "$cache" "$suite $packages v1" usr/lib/systemd/systemd \
  --variant=minbase --include="$packages" \
  --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer' \
  --customize-hook='echo spyoncino-test > "$1/etc/hostname"' \
  "$suite"

# -- 2. the wheel, from the files git knows about (tracked or new, not ignored) ---------------
# the same script the image build uses, so the two install the same wheel
wheel=$(PYTHON="$python" bash "$repo/image/build-wheel.sh" "$cache/dist")
log "wheel: $wheel"

# -- 3. the wheelhouse ----------------------------------------------------------------------
deps=$("$python" - "$wheel" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
lines = z.read(meta).decode().splitlines()
print("\n".join(sorted(l for l in lines if l.startswith("Requires-Dist:")
                       and ("extra ==" not in l or 'extra == "mqtt"' in l))))
PY
)
dkey=$(printf '%s' "$deps" | sha256sum | cut -c1-12)
wheelhouse=$cache/wheelhouse-$dkey
if [ ! -f "$wheelhouse/.complete" ]; then
  log "filling $wheelhouse"
  rm -rf "$wheelhouse"
  # pip wheel, not pip download: sdnotify is published as an sdist only
  # with the extras the role installs by default (spyoncino_pip_extras: [mqtt])
  "$python" -m pip wheel -q -w "$wheelhouse" "$wheel[mqtt]" >&2
  rm -f "$wheelhouse"/spyoncino-*.whl
  touch "$wheelhouse/.complete"
  for old in "$cache"/wheelhouse-*; do
    [ "$old" = "$wheelhouse" ] || rm -rf "$old"
  done
  log "wheelhouse: $(du -sh "$wheelhouse" | cut -f1)"
else
  log "wheelhouse cached: $wheelhouse"
fi

echo "ROOTFS=$rootfs"
echo "WHEEL=$wheel"
echo "WHEELHOUSE=$wheelhouse"
