#!/usr/bin/env bash
# 40 — the same software as a provisioned board: boot the rootfs in systemd-nspawn
# (arm64 under qemu-user, systemd as PID 1, no network) and run the project's Ansible role
# inside it with a local connection, installing the wheel from step 30 offline from its
# wheelhouse. The role's systemd tasks then talk to a real PID 1 (over a plain chroot they
# would read the host's). An arm64 /proc/cpuinfo is bound in: LiteRT segfaults under
# qemu-user with the host's x86 one. spyoncino_start_service=false: install and enable the
# service, do not start it (first boot on the card starts it).
set -euo pipefail
. "$(dirname "$0")/../env.sh"

wheel=$(ls "$WORK_DIR"/dist/spyoncino-*.whl)
wheelhouse=$(cat "$WORK_DIR/wheelhouse.path")
version=$(basename "$wheel" | cut -d- -f2)

[ -d "$ROOTFS/usr/lib/systemd" ] || die "no rootfs at $ROOTFS (step 20 unpacks it)"
srv=$WORK_DIR/srv && rm -rf "$srv" && mkdir -p "$srv"
cp "$IMAGE_DIR/files/cpuinfo-arm64" "$srv/cpuinfo"
cat > "$srv/inventory.ini" <<INI
[spyoncino]
localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3
INI
picamera2=false
[ "$VARIANT" = raspios ] && picamera2=true
extras=$(printf '%s' "$PIP_EXTRAS" | tr ',' ' ' | xargs -n1 printf '"%s",' | sed 's/,$//')
cat > "$srv/vars.yml" <<YML
---
# The image's role variables (image/steps/40-provision.sh). Everything else: role defaults.
spyoncino_version: "$version"
spyoncino_install_from: wheel
spyoncino_wheel_file: /srv/dist/$(basename "$wheel")
spyoncino_pip_find_links: /srv/wheelhouse
spyoncino_pip_no_index: true
spyoncino_pip_extras: [$extras]
# no apt lists and no network in the build container; PyAV's wheel carries its own FFmpeg
spyoncino_apt_update_cache: false
spyoncino_ffmpeg: false
spyoncino_picamera2: $picamera2
spyoncino_hardware_profile: $HARDWARE_PROFILE
# install and enable; the card's first boot starts it
spyoncino_start_service: false
spyoncino_wait_for_health: false
spyoncino_environment:
  # GIF/clip assembly in RAM (/tmp is a tmpfs on the image): spares the SD card
  SPYONCINO_STORAGE__SCRATCH: /tmp/spyoncino
# replaced at first boot by spyoncino/config.yaml from the boot partition
spyoncino_cameras:
  front:
    name: Front door
    source: /dev/video0
    max_fps: 5
YML

log "booting the rootfs in systemd-nspawn (qemu-user)"
console=$WORK_DIR/nspawn-console.log
systemd-nspawn --register=no --keep-unit --private-network -D "$ROOTFS" -b --console=pipe \
  --bind-ro="$REPO/ansible:/srv/ansible" \
  --bind-ro="$wheelhouse:/srv/wheelhouse" \
  --bind-ro="$(dirname "$wheel"):/srv/dist" \
  --bind-ro="$srv:/srv/image" \
  </dev/null >"$console" 2>&1 &
nspawn=$!
stop() {
  kill -TERM "$nspawn" 2>/dev/null || true  # nspawn asks the container's systemd to power off
  for _ in $(seq 120); do kill -0 "$nspawn" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL "$nspawn" 2>/dev/null || true
}
trap stop EXIT

# The container's systemd: the child of nspawn that is PID 1 in its own PID namespace (nspawn
# first forks a short-lived helper, which is a child too for a moment).
init=""
for _ in $(seq 120); do
  kill -0 "$nspawn" 2>/dev/null || { cat "$console" >&2; die "systemd-nspawn exited"; }
  for c in $(cat "/proc/$nspawn/task/$nspawn/children" 2>/dev/null); do
    if grep -Eq '^NSpid:.*[[:space:]]1$' "/proc/$c/status" 2>/dev/null; then init=$c; fi
  done
  [ -n "$init" ] && break
  sleep 0.5
done
[ -n "$init" ] || die "the container's init did not appear"
inside() {
  nsenter -t "$init" -m -u -i -n -p -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 "$@"
}
start=$(date +%s)
for _ in $(seq 300); do
  state=$(inside systemctl is-system-running 2>/dev/null || true)
  case $state in running|degraded) break ;; esac
  sleep 1
done
log "container up in $(( $(date +%s) - start )) s ($state)"
# nspawn 252 refuses --bind over /proc; bind it from inside the container's mount namespace,
# where every later nsenter'd process (Ansible, pip, the app's profile probe) sees it
nsenter -t "$init" -m -- mount --bind /srv/image/cpuinfo /proc/cpuinfo
inside grep -q "CPU implementer	: 0x41" /proc/cpuinfo || die "the arm64 /proc/cpuinfo is not in place"

start=$(date +%s)
inside ansible-playbook -i /srv/image/inventory.ini -e @/srv/image/vars.yml \
  /srv/ansible/provision.yml > "$WORK_DIR/ansible.log" 2>&1 || {
  tail -40 "$WORK_DIR/ansible.log" >&2; die "the Ansible role failed (log: $WORK_DIR/ansible.log)"; }
tail -3 "$WORK_DIR/ansible.log" >&2
log "role applied in $(( $(date +%s) - start )) s"
inside systemctl is-enabled spyoncino.service >/dev/null || die "the role did not enable spyoncino.service"
