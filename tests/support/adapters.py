"""Adapter helpers: the peft reference (one adapter alone) and requests on an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from server.engine.engine import Engine
from server.engine.request import GenerationParams, GenerationRequest
from tests.support.servers import MODEL_DIR


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
        # greedy answers by (adapter, prompt, options): tests ask again for the same references
        self._answers: dict[tuple[Any, ...], list[int]] = {}

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
        key = (adapter, tuple(input_ids), tuple(eos), pad, tuple(sorted(kw.items())))
        if key not in self._answers:
            self._answers[key] = self._generate(adapter, input_ids, eos, pad, **kw)
        return list(self._answers[key])

    def _generate(self, adapter: str | None, input_ids: list[int], eos: tuple[int, ...], pad: int,
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


def make_request(engine: Engine, text: str, adapter: Any = None, chat: bool = True, **kw: Any
                 ) -> GenerationRequest:
    ids = engine.encode_chat([{"role": "user", "content": text}]) if chat else engine.encode(text)
    assert engine.limits is not None
    kw.setdefault("max_new_tokens", 12)
    limits = engine.limits
    params = GenerationParams(eos_token_ids=limits.eos_token_ids, pad_token_id=limits.pad_token_id, **kw)
    return GenerationRequest(ids, params, adapter=adapter)
