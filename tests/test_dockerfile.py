"""Static checks of the Dockerfile; `make image-test` builds and runs it for real."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[str]:
    return [rest.split(" AS ")[-1].strip() for word, rest in instructions() if word == "FROM"]


def test_multi_stage_with_a_cuda_base_by_default():
    assert stages() == ["base", "deps", "weights", "runtime"]
    base = next(rest for word, rest in instructions() if word == "ARG" and rest.startswith("BASE_IMAGE="))
    assert re.fullmatch(r"BASE_IMAGE=nvidia/cuda:\d+\.\d+\.\d+-[a-z]+-ubuntu\d+\.\d+", base)
    assert ("ARG", "PRESET=smollm2-135m-instruct") in instructions()


def test_runtime_stage_serves_as_non_root_with_healthcheck():
    runtime = instructions()[[i for i, (w, r) in enumerate(instructions()) if w == "FROM"][-1]:]
    words = dict(runtime)
    assert words["USER"].split(":")[0] not in ("0", "root")
    assert words["EXPOSE"] == "5000"
    assert "/health" in words["HEALTHCHECK"]
    assert words["ENTRYPOINT"] == '["python", "-m", "server"]'
    assert "MODEL_PATH=/workspace/weights" in words["ENV"]
    assert any(w == "RUN" and "ln -s /workspace/weights /workspace/tfs/weights" in r for w, r in runtime)


def test_token_is_a_build_secret_never_an_arg_or_env():
    for word, rest in instructions():
        if word in ("ARG", "ENV"):
            assert "TOKEN" not in rest.upper(), rest
    assert "--mount=type=secret,id=hf_token" in DOCKERFILE


def test_dependencies_layer_depends_only_on_requirements():
    deps = DOCKERFILE.split("AS deps")[1].split("FROM ")[0]
    copies = [line for line in deps.splitlines() if line.startswith("COPY")]
    assert copies == ["COPY requirements.txt /tmp/requirements.txt"]
    assert "--mount=type=cache,target=/root/.cache/pip" in deps
