"""An example MosaicML-style model handler: greedy text generation with plain transformers.

Serve it (from the repository root):

    DEPLOYMENT_YAML=examples/handlers/deployment.yaml python -m server
    # or: MODEL_HANDLER_DIR=examples/handlers MODEL_HANDLER=text_generation_handler:TextGenerationHandler \
    #     MODEL_PARAMETERS='{"model_name_or_path": "models/smollm2-135m-instruct"}' python -m server

The server builds the class once with the deployment's `model_parameters`, batches concurrent
`/predict` inputs into one `predict(model_requests)` call, and sends `predict_stream`'s chunks to
`/predict_stream` as newline-delimited JSON.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer


class TextGenerationHandler:
    def __init__(self, model_name_or_path: str, max_new_tokens: int = 32) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_name_or_path, local_files_only=True)
        self.tokenizer.padding_side = "left"  # a batch of prompts ends where generation starts
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, local_files_only=True,
                                                          dtype=torch.float32).eval()
        self.max_new_tokens = max_new_tokens

    def _parse(self, model_request: dict[str, Any]) -> tuple[str, int]:
        """ValueError and KeyError reach the client as a 400."""
        prompt = model_request["input"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError("input must be a non-empty string")
        n = (model_request.get("parameters") or {}).get("max_new_tokens", self.max_new_tokens)
        if not isinstance(n, int) or not 1 <= n <= 512:
            raise ValueError("max_new_tokens must be an integer in [1, 512]")
        return prompt, n

    def predict(self, model_requests: list[dict[str, Any]]) -> list[str]:
        """One batch: every prompt in one `generate` call; outputs in input order."""
        parsed = [self._parse(r) for r in model_requests]
        enc = self.tokenizer([p for p, _ in parsed], return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = self.model.generate(**enc, max_new_tokens=max(n for _, n in parsed), do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [self.tokenizer.decode(row[:n], skip_special_tokens=True)
                for row, (_, n) in zip(new, parsed, strict=True)]

    def predict_stream(self, **model_request: Any) -> Iterator[str]:
        """One input; yields text as it is generated."""
        prompt, n = self._parse(model_request)
        enc = self.tokenizer(prompt, return_tensors="pt")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs = {**enc, "max_new_tokens": n, "do_sample": False, "streamer": streamer,
                  "pad_token_id": self.tokenizer.pad_token_id}
        thread = threading.Thread(target=self.model.generate, kwargs=kwargs, daemon=True)
        thread.start()
        try:
            yield from (chunk for chunk in streamer if chunk)
        finally:
            thread.join()
