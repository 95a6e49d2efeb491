"""Load a model and tokenizer once: a local Hugging Face folder (safetensors or bin) or a GGUF file.

On CUDA, accelerate places (and shards) the model with `device_map` and optional `max_memory`; on a
machine without a GPU the model is loaded on the CPU with no dispatch hooks, which is fastest there.
Under tensor parallelism (`ranks.world > 1`) transformers' `tp_plan` splits every layer across the
ranks instead, each rank on its own GPU (or the CPU).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from server.config import Settings
from server.model import kernel_choice, quantize
from server.model.cpu_kernels import use_onednn_linear
from server.model.cpuinfo import cpu_flags
from server.model.dtype_choice import DtypeChoice, config_dtype, resolve
from server.model.ranks import SINGLE, Ranks
from server.model.tensor_parallel import refusal
from server.presets import PRESETS_DIR

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    context_length: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    quantization: str = "none"
    weight_bytes: int = 0  # as stored (quantized weights count their int8/int4 data and scales)
    dtype_reason: str = ""  # why TORCH_DTYPE resolved to `dtype` (/info, the start-up log)
    ranks: Ranks = SINGLE  # tensor parallelism: this process's rank and the group's size
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def offloaded(self) -> bool:
        """Some weights live off the accelerator (CPU/disk offload): accelerate's hooks then move
        them in and out around each forward, which is not safe from two threads at once."""
        return any(p.device.type == "meta" for p in self.model.parameters())

    @property
    def model_lock(self) -> threading.RLock:
        """The lock every forward takes on a CPU or offloaded model; changes to the model's modules
        (adapters) take it too."""
        return self._lock

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold around a forward/generate when other threads may use the model too (the batch, the
        exact-generate lane, prompt scoring). Free unless the model is offloaded."""
        if not self._offloaded:
            yield
            return
        with self._lock:
            yield

    def __post_init__(self) -> None:
        self._offloaded = self.offloaded
        if self._offloaded or self.device.type == "cpu":
            self._serialize_forward()

    def _serialize_forward(self) -> None:
        """One forward at a time. Several engine threads use the model (the batch, the exact
        lane, prompt scoring); on a CPU two concurrent forwards only oversubscribe the cores (each
        runs many times slower), and offloaded weights must not be moved by two threads at once.
        Locking each forward, not each `generate` call, lets the threads take turns step by step."""
        inner = self.model.forward
        lock = self._lock

        @functools.wraps(inner)  # generate inspects forward's signature
        def forward(*args, **kwargs):  # noqa: ANN202 - same signature as the model's
            with lock:
                return inner(*args, **kwargs)

        self.model.forward = forward


def resolve_dtype(s: Settings, path: str, cuda: bool, common: dict[str, Any]) -> DtypeChoice:
    """TORCH_DTYPE, `auto` read against the checkpoint's config and this device
    (server/model/dtype_choice.py)."""
    gguf = "gguf_file" in common
    own = None
    if s.torch_dtype == "auto" and not gguf:
        own = config_dtype(AutoConfig.from_pretrained(path, **common))
    return resolve(s.torch_dtype, cuda, gguf, own, frozenset() if cuda else cpu_flags())


def resolve_device_map(s: Settings, cuda: bool) -> dict[str, Any]:
    if not cuda or s.device_map == "cpu":
        return {}
    kwargs: dict[str, Any] = {"device_map": s.device_map}
    if s.max_memory:
        kwargs["max_memory"] = {int(k) if k.isdigit() else k: v for k, v in s.max_memory.items()}
    return kwargs


def read_chat_template(value: str | None) -> str | None:
    """A chat template given as a file (absolute, relative, or under presets/) or inline Jinja."""
    if not value:
        return None
    for candidate in (Path(value), PRESETS_DIR / value):
        try:
            if candidate.is_file():
                return candidate.read_text()
        except OSError:  # an inline template can be too long to be a file name
            break
    return value


def split_gguf(path: str) -> tuple[str, str | None]:
    p = Path(path)
    if p.suffix == ".gguf":
        return str(p.parent), p.name
    return path, None


def check_quantization(s: Settings) -> None:
    """Refuse (QuantizationError, with the reason) a QUANTIZATION this machine cannot serve."""
    cuda = torch.cuda.is_available() and s.device_map != "cpu"
    quantize.check(s.quantization, cuda=cuda, gguf=split_gguf(s.model_path)[1] is not None)


def check_tensor_parallel(s: Settings) -> None:
    """Refuse (ModelLoadError, naming the sizes) a TENSOR_PARALLEL the model's config cannot split."""
    if s.tensor_parallel <= 1:
        return
    path, gguf = split_gguf(s.model_path)
    common: dict[str, Any] = {"local_files_only": not s.allow_remote_files,
                              "trust_remote_code": s.trust_remote_code}
    if gguf:
        common["gguf_file"] = gguf
    why = refusal(AutoConfig.from_pretrained(path, **common), s.tensor_parallel)
    if why:
        raise ModelLoadError(f"TENSOR_PARALLEL={s.tensor_parallel}: {why}")


def _placement(s: Settings, cuda: bool, ranks: Ranks) -> dict[str, Any]:
    """`from_pretrained` arguments that place the weights: a tensor-parallel split, or device_map."""
    if ranks.world == 1:
        return resolve_device_map(s, cuda)
    try:
        from transformers.distributed import DistributedConfig

        return {"distributed_config": DistributedConfig(tp_plan="auto")}
    except ImportError:  # transformers before DistributedConfig took the plan
        return {"tp_plan": "auto"}


def load(s: Settings, ranks: Ranks = SINGLE) -> LoadedModel:
    cuda = torch.cuda.is_available() and s.device_map != "cpu"
    path, gguf = split_gguf(s.model_path)
    check_quantization(s)
    local_only = not s.allow_remote_files
    if local_only and not Path(path).exists():
        raise ModelLoadError(
            f"model path {path!r} does not exist; run `make model`, or set ALLOW_REMOTE_FILES=true "
            "to download a hub id"
        )
    common: dict[str, Any] = {"local_files_only": local_only, "trust_remote_code": s.trust_remote_code}
    if gguf:
        common["gguf_file"] = gguf
    dtype_choice = resolve_dtype(s, path, cuda, common)
    if ranks.world > 1:
        check_tensor_parallel(s)
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    skip = s.quantization_skip
    if s.quantization == "int8":
        ungroupable = quantize.ungroupable_linears(
            quantize.empty_model(path, trust_remote_code=s.trust_remote_code))
        if ungroupable:
            log.info("QUANTIZATION=int8: %d linear layers whose input size is not a multiple of %d "
                     "stay in full precision", len(ungroupable), quantize.INT8_GROUP)
        skip = (*skip, *ungroupable)
    qconfig = quantize.quantization_config(s.quantization, skip)
    if s.quantization == "int4":
        quantize.use_pytorch_unpack()
    if qconfig is not None:
        common["quantization_config"] = qconfig
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype_choice.dtype, **_placement(s, cuda, ranks), **common
        )
    except ValueError as exc:
        if qconfig is None:
            raise
        # e.g. a max_memory that offloads layers to the CPU: quanto quantizes on the accelerator
        raise ModelLoadError(f"QUANTIZATION={s.quantization} cannot load this model here: {exc}") from exc
    quantized = quantize.prepare(model, s.quantization)
    if qconfig is not None and not quantized:
        raise ModelLoadError(f"QUANTIZATION={s.quantization}: this model has no linear layers "
                             f"{quantize.library(s.quantization)} can quantize (torch.nn.Linear); serve "
                             "it with QUANTIZATION=none")
    model.eval()
    if not cuda and ranks.world == 1:
        model.to("cpu")
        _choose_kernels(model, s)  # quantized layers keep their library's kernels
    elif not cuda:
        log.info("tensor parallel: F.linear on every rank's shards (no kernel timing: the ranks "
                 "would time different steps and fall out of step)")
    template = read_chat_template(s.chat_template)
    if template:
        tokenizer.chat_template = template
    tokenizer.padding_side = "left"
    eos = _eos_ids(model, tokenizer)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(eos[0])
    context = s.context_length or _context_length(model, tokenizer)
    loaded = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=model.device,
        dtype=model.dtype,
        context_length=context,
        eos_token_ids=eos,
        pad_token_id=int(tokenizer.pad_token_id),
        quantization=s.quantization,
        weight_bytes=quantize.weight_bytes(model),
        dtype_reason=dtype_choice.reason,
        ranks=ranks,
    )
    log.info(
        "model loaded: %s params, dtype %s (%s), quantization %s (%d layers), weights %.1f MiB, device %s, "
        "context %d", loaded.num_parameters, loaded.dtype, dtype_choice.reason, s.quantization, quantized,
        loaded.weight_bytes / 2**20, getattr(model, "hf_device_map", loaded.device), context,
    )
    return loaded


def _choose_kernels(model: PreTrainedModel, s: Settings) -> None:
    """CPU_LINEAR: `torch` leaves the layers alone, `onednn` pins oneDNN, `auto` (or `measure`) times
    the model's decode steps per row bucket, or reads that decision from KERNEL_CACHE_DIR."""
    if s.cpu_linear == "torch":
        return
    if s.cpu_linear == "onednn":
        log.info("CPU_LINEAR=onednn: %d linear layers on oneDNN at every row count", use_onednn_linear(model))
        return
    cache_dir = None if s.kernel_cache_dir.lower() == "off" else Path(s.kernel_cache_dir)
    decision = kernel_choice.choose(model, s.max_batch_size, cache_dir)
    chosen = [rows for rows, on in zip(kernel_choice.ROW_BUCKETS, decision.onednn_rows, strict=True) if on]
    log.info("CPU_LINEAR=%s: oneDNN at row buckets %s, F.linear at the others (%s%s)\n%s", s.cpu_linear,
             chosen or "none", decision.source,
             f", {decision.seconds:.1f} s" if decision.source == "timed" else "", "\n".join(decision.lines()))


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if source is None:
            continue
        for i in source if isinstance(source, list) else [source]:
            if int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ModelLoadError("the model defines no EOS token")
    return tuple(ids)


def _context_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        value = getattr(model.config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    if 0 < tokenizer.model_max_length < 1_000_000:
        return int(tokenizer.model_max_length)
    return 2048
