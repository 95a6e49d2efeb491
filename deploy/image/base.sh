#!/usr/bin/env bash
# Build (once) and import a Debian base image for the daemonless image test.
#
# The real image builds FROM a public CUDA base; here nothing reaches a container registry, so the
# test builds the same Dockerfile FROM a base made of Debian packages with debootstrap. The rootfs
# tarball is cached outside the clone (INFERBOX_CACHE, default /var/cache/inferbox) so later runs
# only re-import it, and the imported image is kept in buildah's storage under a tag with the
# package list's hash.
set -euo pipefail

SUITE=${DEBIAN_SUITE:-bookworm}
CACHE=${INFERBOX_CACHE:-/var/cache/inferbox}
# python3 + venv: the Dockerfile's base stage skips its own apt step when Python is present.
PACKAGES=${BASE_PACKAGES:-python3,python3-venv,ca-certificates,libgomp1}
KEY=$(printf '%s %s' "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
TARBALL="$CACHE/debian-$SUITE-$KEY.tar"
IMAGE=${BASE_IMAGE_TAG:-localhost/inferbox-base:$SUITE-$KEY}

mkdir -p "$CACHE"
if [ ! -s "$TARBALL" ]; then
    rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs"' EXIT
    echo "debootstrap $SUITE ($PACKAGES) -> $TARBALL" >&2
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" >&2
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
fi

if ! buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
    echo "importing $TARBALL as $IMAGE" >&2
    ctr=$(buildah from scratch)
    buildah add "$ctr" "$TARBALL" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd /bin/bash "$ctr"
    buildah commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
fi
echo "$IMAGE"
