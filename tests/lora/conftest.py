"""Adapter test fixtures: engines with adapters (in-process, the embedded model in float32 on the
CPU) and a reference: peft's PeftModel running one adapter alone with `generate`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from server.config import Settings
from server.engine.engine import Engine
from server.engine.request import GenerationParams, GenerationRequest
from tests.conftest import MODEL_DIR


@pytest.fixture
def start_engine() -> Iterator[Callable[..., Engine]]:
    """Start engines with the given settings (model on the CPU in float32); drained at the end.
    Kaito's strengths come as `adapter_strengths={name: value}` (load_settings reads them)."""
    engines: list[Engine] = []

    def start(**settings: Any) -> Engine:
        engine = Engine(Settings(model_path=str(MODEL_DIR), torch_dtype="float32", device_map="cpu",
                                 **settings))
        engine.start(background=False)
        assert engine.loop is not None, engine.load_error
        engines.append(engine)
        return engine

    yield start
    for e in engines:
        e.drain(30)


@pytest.fixture
def start_engine_raw() -> Iterator[Callable[..., Engine]]:
    """Like `start_engine`, but the engine may fail to load (its `load_error` says why)."""
    engines: list[Engine] = []

    def start(**settings: Any) -> Engine:
        engine = Engine(Settings(model_path=str(MODEL_DIR), torch_dtype="float32", device_map="cpu",
                                 **settings))
        engine.start(background=False)
        engines.append(engine)
        return engine

    yield start
    for e in engines:
        e.drain(30)


class Reference:
    """The embedded model under peft, one adapter at a time (`set_adapter`), batch of one."""

    def __init__(self, adapters_dir: Path) -> None:
        from peft import PeftModel
        from transformers import AutoTokenizer

        from tools.adapters import load_base

        self.tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
        self.model = PeftModel.from_pretrained(load_base(MODEL_DIR), str(adapters_dir / "adapter1"),
                                               adapter_name="adapter1")
        for name in ("adapter2", "adapter3"):
            self.model.load_adapter(str(adapters_dir / name), adapter_name=name)
        self.model.eval()
        self.merges: set[str] = set()

    def merge(self, name: str, adapters: list[str], weights: list[float], combination: str,
              density: float | None = None, sign: str = "total") -> None:
        if name not in self.merges:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # as the server merges (DARE prunes at random)
                self.model.add_weighted_adapter(adapters, weights, name, combination_type=combination,
                                                density=density, majority_sign_method=sign)
            self.merges.add(name)

    def generate(self, adapter: str | None, input_ids: list[int], eos: tuple[int, ...], pad: int,
                 **kw: Any) -> list[int]:
        ids = torch.tensor([input_ids])
        kw = {"max_new_tokens": 12, "do_sample": False, "eos_token_id": list(eos), "pad_token_id": pad,
              "top_k": None, "top_p": None, "temperature": None, **kw}
        with torch.inference_mode():
            if adapter is None:
                with self.model.disable_adapter():
                    out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
            else:
                self.model.set_adapter(adapter)
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **kw)
        return out[0, ids.shape[1]:].tolist()


@pytest.fixture(scope="session")
def reference(adapters_dir: Path) -> Reference:
    return Reference(adapters_dir)


def make_request(engine: Engine, text: str, adapter: Any = None, chat: bool = True, **kw: Any
                 ) -> GenerationRequest:
    ids = engine.encode_chat([{"role": "user", "content": text}]) if chat else engine.encode(text)
    assert engine.limits is not None
    kw.setdefault("max_new_tokens", 12)
    limits = engine.limits
    params = GenerationParams(eos_token_ids=limits.eos_token_ids, pad_token_id=limits.pad_token_id, **kw)
    return GenerationRequest(ids, params, adapter=adapter)
