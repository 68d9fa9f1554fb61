# Sourced by every step: the repository, config.env, the helpers.
IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$IMAGE_DIR/.." && pwd)
. "$IMAGE_DIR/config.env"
. "$IMAGE_DIR/lib.sh"
ROOTFS=$WORK_DIR/rootfs
mkdir -p "$CACHE_DIR" "$WORK_DIR"
