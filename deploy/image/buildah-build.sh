#!/usr/bin/env bash
# Build the Dockerfile with buildah (no daemon): `deploy/image/buildah-build.sh TAG [buildah bud args...]`.
#
# The host's pip configuration and local wheel folders are mounted into every RUN step, so pip in the
# build resolves exactly as pip on this machine does (torch's local CPU wheel instead of the CUDA
# build from the index); /etc/ssl/certs is mounted read-only for pip's TLS.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${1:?usage: buildah-build.sh TAG [bud args...]}
shift

volumes=(-v /etc/ssl/certs:/etc/ssl/certs:ro)
for conf in /etc/pip.conf /etc/xdg/pip /root/.config/pip; do
    [ -e "$conf" ] && volumes+=(-v "$conf:$conf:ro")
done
# Local folders named by pip's configuration (find-links, file:// indexes) and PIP_FIND_LINKS.
dirs=$( { python3 -m pip config list 2>/dev/null || true; echo "${PIP_FIND_LINKS:-}"; } \
    | grep -Eo "(file://)?/[^' ]+" | sed 's#^file://##; s#/simple/*$##' | sort -u)
for dir in $dirs; do
    [ -d "$dir" ] && volumes+=(-v "$dir:$dir:ro")
done
envs=()
[ -n "${PIP_FIND_LINKS:-}" ] && envs+=(--build-arg "PIP_FIND_LINKS=$PIP_FIND_LINKS")

# docker format keeps HEALTHCHECK (OCI image config has no field for it).
exec buildah bud --format docker --isolation chroot --network host --layers \
    "${volumes[@]}" "${envs[@]}" -t "$TAG" "$@" .
