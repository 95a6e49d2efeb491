#!/usr/bin/env bash
# `make image-test`: build the real Dockerfile without a container engine and check that the image
# serves /chat. Installs buildah and debootstrap itself; builds FROM a Debian base made with
# debootstrap (cached in /var/cache/inferbox); runs the image with `buildah run`; asks the
# capital-of-France question and expects "Paris"; mounts one real LoRA adapter at Kaito's
# /mnt/adapter, sees `Adapter added` and gets an answer from it; serves QUANTIZATION=int4. Then
# builds the embedding preset (PRESET=all-minilm-l6-v2: the same cached dependencies layer, only the
# weights differ) and expects a 384-number vector from /embed. Every container and process it
# starts is removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
TAG=${IMAGE_TAG:-localhost/inferbox:image-test}
EMBED_TAG=${EMBED_IMAGE_TAG:-localhost/inferbox:image-test-embed}
HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-240}
start=$(date +%s)
log() { echo "image-test [$(( $(date +%s) - start ))s] $*"; }

need=()
command -v buildah >/dev/null || need+=(buildah)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

base=$(deploy/image/base.sh)
log "base image $base"
build() {  # build TAG [bud args...]
    local tag=$1 previous current
    shift
    previous=$(buildah images --noheading --format '{{.ID}}' "$tag" 2>/dev/null || true)
    deploy/image/buildah-build.sh "$tag" --build-arg "BASE_IMAGE=$base" "$@" 2>&1 | sed 's/^/  build: /'
    log "built $tag"
    current=$(buildah images --noheading --format '{{.ID}}' "$tag")
    if [ -n "$previous" ] && [ "$previous" != "$current" ]; then  # don't pile up superseded images
        buildah rmi "$previous" >/dev/null 2>&1 || true
    fi
}
build "$TAG"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
workdir=$(mktemp -d)
ctr=""
embed_ctr=""
runner=""
run_args=()  # more `buildah run` options for the next serve (a mounted adapter)
stop_server() {
    if [ -n "$runner" ] && kill -0 "$runner" 2>/dev/null; then
        kill -TERM -- "-$runner" 2>/dev/null || true
        for _ in $(seq 30); do kill -0 "$runner" 2>/dev/null || break; sleep 1; done
        kill -KILL -- "-$runner" 2>/dev/null || true
        wait "$runner" 2>/dev/null || true
    fi
    runner=""
}

cleanup() {
    set +e
    stop_server
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1
    [ -n "$embed_ctr" ] && buildah rm "$embed_ctr" >/dev/null 2>&1
    rm -rf "$workdir"
}
trap cleanup EXIT

ctr=$(buildah from --name "inferbox-image-test-$$" "$TAG")
image_field() {  # image_field PY_EXPR: a field of the image's docker config, shell-quoted
    buildah inspect --type image "$TAG" | python3 -c "import json, shlex, sys
c = json.load(sys.stdin)['Docker']['config']
v = $1
print(shlex.join(v) if isinstance(v, list) else (v or ''))"
}
entrypoint=$(image_field "c['Entrypoint'] + (c.get('Cmd') or [])")
user=$(image_field "c['User']")
healthcheck=$(image_field "c['Healthcheck']['Test'][1:]")
[ -n "$healthcheck" ] || { log "FAILED: the image has no HEALTHCHECK"; exit 1; }

# serve LABEL COMMAND [CONTAINER]: run COMMAND in the image as the image's user, in its own process
# group (so stop_server ends the whole tree: buildah run -> server -> gunicorn master -> worker by
# that group's id), and wait for /health.
serve() {
    local label=$1 command=$2 container=${3:-$ctr}
    log "$label: starting '$command' as $user on port $port"
    # DRAIN_DELAY_S=0: no load balancer watches these runs, so stopping one need not wait 5 s
    setsid buildah run --isolation chroot --network host --user "$user" --env "PORT=$port" \
        --env HOST=127.0.0.1 --env DRAIN_DELAY_S=0 "${run_args[@]}" "$container" -- sh -c "exec $command" \
        >"$workdir/server.log" 2>&1 &
    runner=$!
    local deadline=$(( $(date +%s) + HEALTH_TIMEOUT ))
    until curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; do
        if ! kill -0 "$runner" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ] \
            || grep -q "model failed to load" "$workdir/server.log"; then
            log "$label: server did not become healthy; its log:"
            grep -v "inferbox.access" "$workdir/server.log" | tail -40
            exit 1
        fi
        sleep 2
    done
    log "$label: healthy"
}

# serve_and_ask LABEL COMMAND: serve, and expect "Paris" from /chat.
serve_and_ask() {
    local label=$1 answer
    serve "$@"
    answer=$(curl -fsS -X POST "http://127.0.0.1:$port/chat" -H 'Content-Type: application/json' \
        -d '{"messages":[{"role":"user","content":"What is the capital of France?"}],"generate_kwargs":{"max_new_tokens":20,"do_sample":false}}')
    log "$label: answer: $answer"
    if ! grep -q Paris <<<"$answer"; then
        log "FAILED: the answer does not contain Paris"
        exit 1
    fi
}

# 1. As `docker run` starts it: the image's entrypoint. Its own HEALTHCHECK command must pass too.
serve_and_ask "entrypoint" "$entrypoint"
buildah run --isolation chroot --network host --user "$user" --env "PORT=$port" "$ctr" -- sh -c "exec $healthcheck"
log "HEALTHCHECK passes"
stop_server

# 2. As the Kaito Workspace starts it: its command and args, verbatim from the manifest.
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
kaito=$("$py" -c "import shlex, yaml
ws = yaml.safe_load(open('deploy/kubernetes/kaito/workspace.yaml'))
c = ws['inference']['template']['spec']['containers'][0]
print(shlex.join(c.get('command', []) + c.get('args', [])))")
serve_and_ask "kaito workspace" "$kaito"
stop_server
buildah run --isolation chroot --user "$user" "$ctr" -- test -r /workspace/tfs/weights/config.json
log "weights readable at Kaito's /workspace/tfs/weights"

# 2b. A LoRA adapter mounted as Kaito mounts it (/mnt/adapter/<name>/): built here with peft on the
# embedded model (tools/adapters.py), read-only in the container, its Kaito strength as a variable.
"$py" -c "import sys; from tools.adapters import make_adapter
make_adapter(sys.argv[1], sys.argv[2], rank=4, seed=7)" models/smollm2-135m-instruct "$workdir/adapters/imglora"
chmod -R a+rX "$workdir/adapters"
run_args=(--volume "$workdir/adapters:/mnt/adapter:ro" --env imglora=1.0)
serve "adapter" "$entrypoint"
run_args=()
for line in "Adapter added: imglora" "Model loaded successfully"; do
    grep -q "$line" "$workdir/server.log" || { log "FAILED: no '$line' in the log"; tail -40 "$workdir/server.log"; exit 1; }
done
ask() {  # ask ADAPTER: the greedy /chat answer on that adapter
    curl -fsS -X POST "http://127.0.0.1:$port/chat" -H 'Content-Type: application/json' \
        -d "{\"prompt\":\"The capital of France is\",\"return_full_text\":false,\"adapter\":\"$1\",\"generate_kwargs\":{\"max_new_tokens\":12,\"do_sample\":false}}"
}
with_adapter=$(ask imglora)
without=$(ask base)
log "adapter: answer with imglora: $with_adapter; base: $without"
if [ "$with_adapter" = "$without" ] || ! grep -q '"Result"' <<<"$with_adapter"; then
    log "FAILED: the mounted adapter did not answer (or answered as the base model)"
    exit 1
fi
curl -fsS "http://127.0.0.1:$port/v1/models" | grep -q '"imglora"' || { log "FAILED: /v1/models lacks imglora"; exit 1; }
stop_server
log "adapter: Adapter added, Model loaded successfully, an answer of its own, listed in /v1/models"

# 2c. QUANTIZATION=int4 on the CPU, as the image's user: nothing is compiled at run time (the image
# has no compiler and its venv is read-only to that user), and it answers.
run_args=(--env QUANTIZATION=int4)
serve "int4" "$entrypoint"
run_args=()
int4_answer=$(ask base)
stop_server
grep -q '"Result"' <<<"$int4_answer" || { log "FAILED: QUANTIZATION=int4 gave no Result: $int4_answer"; exit 1; }
log "int4: answer: $int4_answer"

# 3. The embedding preset: same dependencies layer, its own weights; /embed answers one vector.
build "$EMBED_TAG" --build-arg PRESET=all-minilm-l6-v2
embed_ctr=$(buildah from --name "inferbox-image-test-embed-$$" "$EMBED_TAG")
serve "embedding" "$entrypoint" "$embed_ctr"
vector=$(curl -fsS -X POST "http://127.0.0.1:$port/embed" -H 'Content-Type: application/json' \
    -d '{"inputs":"3D ActionSLAM: wearable person tracking in multi-floor environments"}')
stop_server
if ! python3 -c "import json, math, sys
v = json.loads(sys.argv[1])
assert len(v) == 1 and len(v[0]) == 384 and abs(math.hypot(*v[0]) - 1) < 1e-3, v" "$vector"; then
    log "FAILED: /embed did not answer one normalized 384-number vector: ${vector:0:200}"
    exit 1
fi
log "embedding: /embed answered a normalized vector of 384 numbers"
log "PASSED in $(( $(date +%s) - start ))s"
