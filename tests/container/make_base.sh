#!/usr/bin/env bash
# Build a Debian bookworm base image (Python 3.11 from Debian) without pulling
# from any registry: debootstrap a minimal root file system and commit it with
# buildah. The result stands in for python:3.11-slim-bookworm when the
# Dockerfile is built here:
#
#   buildah bud --isolation chroot \
#       --build-arg BASE_IMAGE=localhost/dpnbids-base:bookworm -t dpn-bids:test .
#
# Usage: tests/container/make_base.sh [IMAGE_NAME]   (needs root, buildah, debootstrap)
# Environment:
#   DEBIAN_MIRROR   mirror for debootstrap (default http://deb.debian.org/debian)
#   HOST_CA_BUNDLE  CA bundle copied into the image so pip inside the build trusts
#                   the same TLS roots as this host (default /etc/ssl/certs/ca-certificates.crt;
#                   set to "" to keep Debian's own bundle)
#   FORCE=1         rebuild even when the image exists
set -euo pipefail

IMAGE="${1:-localhost/dpnbids-base:bookworm}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_CA_BUNDLE="${HOST_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"

for tool in buildah debootstrap; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make_base.sh: '$tool' is not installed; run: apt-get install -y buildah debootstrap" >&2
        exit 2
    fi
done
if [ "$(id -u)" != 0 ]; then
    echo "make_base.sh: debootstrap needs root (run with sudo)" >&2
    exit 2
fi

if [ "${FORCE:-0}" != 1 ] && buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "make_base.sh: $IMAGE exists (FORCE=1 rebuilds)"
    exit 0
fi

rootfs="$(mktemp -d /var/tmp/dpnbids-rootfs.XXXXXX)"
ctr=""
cleanup() {
    if [ -n "$ctr" ]; then buildah rm "$ctr" >/dev/null 2>&1 || true; fi
    rm -rf "$rootfs"
}
trap cleanup EXIT

echo "make_base.sh: debootstrap bookworm into $rootfs"
debootstrap --variant=minbase \
    --include=python3,python3-venv,ca-certificates,procps \
    bookworm "$rootfs" "$MIRROR"

# Slim the root file system the way the official slim images do.
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
       "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/debconf/*-old
ln -sf python3 "$rootfs/usr/bin/python"

if [ -n "$HOST_CA_BUNDLE" ] && [ -f "$HOST_CA_BUNDLE" ]; then
    cp "$HOST_CA_BUNDLE" "$rootfs/etc/ssl/certs/ca-certificates.crt"
fi

ctr="$(buildah from scratch)"
mnt="$(buildah mount "$ctr")"
cp -a "$rootfs"/. "$mnt"/
buildah umount "$ctr" >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    --env REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    --cmd python3 \
    --label org.opencontainers.image.description="Debian bookworm + Python 3.11 (debootstrap), test base for dpnbids" \
    "$ctr"
buildah commit --rm "$ctr" "$IMAGE" >/dev/null
ctr=""
echo "make_base.sh: committed $IMAGE"
buildah images "$IMAGE"
