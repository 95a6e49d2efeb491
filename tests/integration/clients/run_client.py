"""Drive a real client library against a running server; print one JSON object of what it saw.

Runs in .venv-clients (text-generation, lorax-client and mosaicml-cli pin huggingface-hub<1.0, which
the server's venv cannot hold):
`python run_client.py <mode> <base_url> [args]`, mode one of `modes` below. The pytest side
(tests/integration/test_real_clients.py, test_structured_dialects.py) asserts on the output.
"""

from __future__ import annotations

import json
import sys
from typing import Any

PROMPT = "The capital of France is"
TIMEOUT = 300


def _err(fn: Any) -> dict[str, Any]:
    try:
        fn()
    except Exception as exc:  # the client's own exception type is what we check
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None}


def _dump(obj: Any) -> Any:
    return obj.model_dump(mode="json") if hasattr(obj, "model_dump") else obj


def tgi(url: str) -> dict[str, Any]:
    from text_generation import Client
    from text_generation.types import Message

    c = Client(url, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    r = c.generate(PROMPT, max_new_tokens=5, decoder_input_details=True, top_n_tokens=2)
    out["plain"] = _dump(r)
    events = [_dump(e) for e in c.generate_stream(PROMPT, max_new_tokens=5)]
    out["stream"] = events
    out["stop"] = _dump(c.generate(PROMPT, max_new_tokens=10, stop_sequences=["."]))
    out["seed"] = [c.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=7).generated_text
                   for _ in range(2)]
    out["best_of"] = _dump(c.generate(PROMPT, max_new_tokens=4, do_sample=True, best_of=2))
    out["full_text"] = c.generate(PROMPT, max_new_tokens=3, return_full_text=True).generated_text
    out["too_long"] = _err(lambda: c.generate(PROMPT, max_new_tokens=100000))
    chat = c.chat([Message(role="user", content="What is the capital of France?")], max_tokens=12,
                  temperature=0.01, seed=1)
    out["chat"] = _dump(chat)
    return out


def lorax(url: str) -> dict[str, Any]:
    from lorax import Client

    c = Client(url, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    out["plain"] = _dump(c.generate(PROMPT, max_new_tokens=5, return_k_alternatives=2))
    out["stream"] = [_dump(e) for e in c.generate_stream(PROMPT, max_new_tokens=5)]
    out["stop"] = _dump(c.generate(PROMPT, max_new_tokens=10, stop_sequences=["."]))
    out["seed"] = [c.generate(PROMPT, max_new_tokens=8, do_sample=True, seed=7).generated_text
                   for _ in range(2)]
    out["ignore_eos"] = _dump(c.generate("Say hi.", max_new_tokens=6, ignore_eos_token=True))
    out["adapter"] = _err(lambda: c.generate(PROMPT, max_new_tokens=3, adapter_id="no-such-adapter"))
    return out


def lorax_adapters(url: str, first: str, second: str) -> dict[str, Any]:
    """LoRAX's adapter fields through lorax-client, and MosaicML's `parameters.adapter` through
    mosaicml-cli, on a server whose ADAPTERS_DIR holds `first` and `second`
    (tests/integration/test_adapters_api.py)."""
    from lorax import Client
    from lorax.types import MergedAdapters

    c = Client(url, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    out["base"] = c.generate(PROMPT, max_new_tokens=8, adapter_id="base").generated_text
    out["first"] = _dump(c.generate(PROMPT, max_new_tokens=8, adapter_id=first, adapter_source="local"))
    out["second"] = c.generate(PROMPT, max_new_tokens=8, adapter_id=second).generated_text
    out["stream"] = [_dump(e) for e in c.generate_stream(PROMPT, max_new_tokens=8, adapter_id=first)]
    merged = MergedAdapters(ids=[first, second], weights=[0.5, 0.5], merge_strategy="linear", density=1.0)
    out["merged"] = c.generate(PROMPT, max_new_tokens=8, merged_adapters=merged).generated_text
    out["merged_again"] = c.generate(PROMPT, max_new_tokens=8, merged_adapters=merged).generated_text
    ties = MergedAdapters(ids=[first, second], weights=[0.7, 0.3], merge_strategy="ties", density=0.5,
                          majority_sign_method="frequency")
    out["ties"] = c.generate(PROMPT, max_new_tokens=8, merged_adapters=ties).generated_text
    out["unknown"] = _err(lambda: c.generate(PROMPT, max_new_tokens=3, adapter_id="no-such-adapter"))
    out["s3"] = _err(lambda: c.generate(PROMPT, max_new_tokens=3, adapter_id=first, adapter_source="s3"))
    # MosaicML's client on the same server: parameters.adapter
    from mcli import predict

    body = {"inputs": [PROMPT], "parameters": {"adapter": first, "max_new_tokens": 8, "temperature": 0}}
    out["mcli"] = predict(url, body, timeout=TIMEOUT)
    out["mcli_stream"] = list(predict(url, body, timeout=TIMEOUT, stream=True))
    out["mcli_unknown"] = _err(lambda: predict(url, {"inputs": [PROMPT], "parameters": {
        "adapter": "no-such-adapter"}}, timeout=TIMEOUT))
    return out


def mcli(url: str) -> dict[str, Any]:
    from mcli import predict

    body = {"inputs": [PROMPT, "The capital of Germany is"], "parameters": {"max_new_tokens": 5,
                                                                             "temperature": 0}}
    out: dict[str, Any] = {"plain": predict(url, body, timeout=TIMEOUT)}
    out["stream"] = list(predict(url, {"inputs": [PROMPT], "parameters": {"max_new_tokens": 5,
                                                                          "temperature": 0}},
                                 timeout=TIMEOUT, stream=True))
    out["bad"] = _err(lambda: predict(url, {"inputs": "not a list"}, timeout=TIMEOUT))
    return out


# Structured output (tests/integration/test_structured_dialects.py asserts on what comes back)
JSON_PROMPT = "Describe a person as JSON with a name and an age:"
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150}},
          "required": ["name", "age"], "additionalProperties": False}
CODE_PROMPT = "Write a ticket code such as 123-ab:"
CODE = r"[0-9]{3}-[a-z]{2}"


def tgi_grammar(url: str) -> dict[str, Any]:
    """The text-generation client's `Grammar` (regex and JSON), plain and streamed, and bad ones."""
    from text_generation import Client
    from text_generation.types import Grammar, GrammarType

    c = Client(url, timeout=TIMEOUT)
    rx, js = Grammar(type=GrammarType.Regex, value=CODE), Grammar(type=GrammarType.Json, value=PERSON)
    out: dict[str, Any] = {}
    out["regex"] = _dump(c.generate(CODE_PROMPT, max_new_tokens=12, grammar=rx))
    out["regex_stream"] = [_dump(e) for e in c.generate_stream(CODE_PROMPT, max_new_tokens=12, grammar=rx)]
    out["json"] = _dump(c.generate(JSON_PROMPT, max_new_tokens=40, grammar=js))
    out["json_stream"] = [_dump(e) for e in c.generate_stream(JSON_PROMPT, max_new_tokens=40, grammar=js)]
    out["json_short"] = _dump(c.generate(JSON_PROMPT, max_new_tokens=3, grammar=js))
    out["bad_regex"] = _err(lambda: c.generate(CODE_PROMPT, max_new_tokens=4, grammar=Grammar(
        type=GrammarType.Regex, value="[0-9")))
    out["bad_schema"] = _err(lambda: c.generate(JSON_PROMPT, max_new_tokens=4, grammar=Grammar(
        type=GrammarType.Json, value={"type": "objekt"})))
    bad = {"type": "object", "properties": {"a": {"type": "integer", "minimum": "zero"}}}
    out["bad_schema_stream"] = _err(lambda: list(c.generate_stream(
        JSON_PROMPT, max_new_tokens=4, grammar=Grammar(type=GrammarType.Json, value=bad))))
    return out


def lorax_json(url: str) -> dict[str, Any]:
    """lorax-client's `response_format` (with a schema, and a bare json_object), and a bad one."""
    from lorax import Client
    from lorax.types import ResponseFormat

    c = Client(url, timeout=TIMEOUT)
    out: dict[str, Any] = {}
    fmt = ResponseFormat(type="json_object", schema=PERSON)
    out["schema"] = _dump(c.generate(JSON_PROMPT, max_new_tokens=40, response_format=fmt))
    out["schema_dict"] = _dump(c.generate(JSON_PROMPT, max_new_tokens=40, response_format={
        "type": "json_object", "schema": PERSON}))
    out["stream"] = [_dump(e) for e in c.generate_stream(JSON_PROMPT, max_new_tokens=40, response_format=fmt)]
    out["bad_schema"] = _err(lambda: c.generate(JSON_PROMPT, max_new_tokens=4, response_format={
        "type": "json_object", "schema": {"type": "object", "required": "name"}}))
    out["bad_type"] = _err(lambda: c.generate(JSON_PROMPT, max_new_tokens=4, response_format={
        "type": "yaml", "schema": PERSON}))
    return out


INSTRUCTION = "Represent the Science title:"
TITLES = ["3D ActionSLAM: wearable person tracking in multi-floor environments",
          "The capital of France is Paris."]


def mcli_embed(url: str) -> dict[str, Any]:
    """An embedding model behind /predict, as MosaicML served instructor-large."""
    from mcli import predict

    pairs = {"inputs": [[INSTRUCTION, t] for t in TITLES]}
    out: dict[str, Any] = {"pairs": predict(url, pairs, timeout=TIMEOUT)}
    out["plain"] = predict(url, {"inputs": TITLES}, timeout=TIMEOUT)
    out["bad_pair"] = _err(lambda: predict(url, {"inputs": [["only one"]]}, timeout=TIMEOUT))
    return out


if __name__ == "__main__":
    which, base, *args = sys.argv[1:]
    modes = {"tgi": tgi, "lorax": lorax, "lorax_adapters": lorax_adapters, "mcli": mcli,
             "mcli_embed": mcli_embed, "tgi_grammar": tgi_grammar, "lorax_json": lorax_json}
    print(json.dumps(modes[which](base, *args)))
