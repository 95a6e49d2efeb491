#!/usr/bin/env bash
# cached_build.sh OUT KEY_FILE... -- COMMAND...: build the folder OUT with COMMAND (which writes OUT),
# or copy it from the build cache when the same inputs built it before. The key is the SHA-256 of
# every KEY_FILE and of COMMAND itself, so a changed input (the model file, the converter, the
# pinned requirements) builds afresh. The cache (INFERBOX_BUILD_CACHE, default
# ~/.cache/inferbox/builds) is what pip's wheel cache is to the venv: a clean clone still builds
# everything it lacks, it just need not convert the same weights again.
set -euo pipefail
out=$1
shift
keys=()
while [ "$1" != "--" ]; do keys+=("$1"); shift; done
shift
cache=${INFERBOX_BUILD_CACHE:-$HOME/.cache/inferbox/builds}
key=$( { sha256sum "${keys[@]}" | cut -d' ' -f1; printf '%s\n' "$@"; } | sha256sum | cut -c1-32)
if [ -d "$cache/$key" ]; then
    echo "$out: copied from the build cache ($cache/$key)"
    rm -rf "$out" && mkdir -p "$(dirname "$out")" && cp -a "$cache/$key" "$out"
    exit 0
fi
"$@"
mkdir -p "$cache"
rm -rf "$cache/$key.tmp" && cp -a "$out" "$cache/$key.tmp" && mv "$cache/$key.tmp" "$cache/$key"
