# syntax=docker/dockerfile:1.7
# inferbox image: weights baked in at /workspace/weights (Kaito's layout), gunicorn on :5000.
#
#   docker build -t inferbox .                                   # default preset, no hub download
#   docker build --build-arg PRESET=all-minilm-l6-v2 -t inferbox:all-minilm-l6-v2 .   # embeddings, no hub
#   docker build --build-arg PRESET=mistral-7b-instruct \
#       --secret id=hf_token,env=HF_TOKEN -t inferbox:mistral .  # pinned revision from the hub
#   docker run --gpus all -p 5000:5000 inferbox
#
# Environment variables override everything at run time (MODEL_PATH, PRESET, TORCH_DTYPE, ...).
# BASE_IMAGE only needs a glibc userland; Python is installed when the base has none.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04
ARG PRESET=smollm2-135m-instruct

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi

# Dependencies: only requirements.txt, so this layer is rebuilt only when the pins change.
FROM base AS deps
# A folder of local wheels (the daemonless test mounts this machine's; empty for a normal build).
ARG PIP_FIND_LINKS=
COPY requirements.txt /tmp/requirements.txt
RUN --mount=type=cache,target=/root/.cache/pip \
    python3 -m venv /opt/venv \
    && pip install --disable-pip-version-check -r /tmp/requirements.txt

# Weights: chosen by PRESET. Only the code that fetches/converts is copied, so editing the server
# does not invalidate this (large) layer.
FROM deps AS weights
ARG PRESET
WORKDIR /src
COPY server/__init__.py server/presets.py server/
COPY server/model/__init__.py server/model/convert.py server/model/embedding_package.py server/model/fetch.py \
     server/model/
COPY presets/chat_templates/ presets/chat_templates/
COPY presets/${PRESET}.yaml presets/
RUN --mount=type=cache,target=/root/.cache/pip \
    --mount=type=secret,id=hf_token \
    python -m server.model.fetch --preset "${PRESET}" --out /workspace/weights

# On top of the dependencies' own layers: a `COPY --from=deps /opt/venv` would store the venv twice,
# and every cached rebuild would hash all of it to find its layer (docs/architecture/decisions.md).
FROM deps AS runtime
ARG PRESET
RUN (getent group inferbox || groupadd --system --gid 10001 inferbox) \
    && (id inferbox || useradd --system --uid 10001 --gid inferbox --home-dir /workspace --shell /usr/sbin/nologin inferbox) \
    && mkdir -p /workspace/tfs \
    && ln -s /workspace/weights /workspace/tfs/weights
COPY --from=weights /workspace/weights /workspace/weights
# The code lives where Kaito's launch command expects it (`accelerate launch ... tfs/inference_api.py`).
COPY inference_api.py /workspace/tfs/
COPY server/ /workspace/tfs/server/
COPY presets/ /workspace/tfs/presets/
WORKDIR /workspace
ENV PYTHONPATH=/workspace/tfs \
    PRESET=${PRESET} \
    MODEL_PATH=/workspace/weights \
    HOST=0.0.0.0 \
    PORT=5000 \
    HF_HUB_OFFLINE=1 \
    HF_HOME=/tmp/hf-home \
    HOME=/tmp
USER 10001:10001
EXPOSE 5000
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '5000') + '/health', timeout=4)"]
ENTRYPOINT ["python", "-m", "server"]
CMD []
