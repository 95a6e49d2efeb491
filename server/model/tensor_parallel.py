"""Which tensor-parallel sizes a model allows, from its transformers config alone (no torch, no weights).

transformers' `tp_plan` (the config's `base_model_tp_plan`, e.g. LlamaConfig's) splits q/k/v and the
MLP's gate/up projections by output rows ("colwise") and o_proj/down_proj by input columns
("rowwise"); embeddings and the LM head are split over the vocabulary; norms stay whole on every
rank. Of those sizes three must divide by N:

- num_attention_heads: each rank must hold whole query heads (attention reshapes by head_dim);
- num_key_value_heads: each rank keeps the KV cache of its own KV heads (transformers'
  `get_kv_heads_per_rank` gives up on a remainder), and grouped queries must find their KV head;
- intermediate_size: the MLP is split evenly so no rank is the slow one.

hidden_size and vocab_size need not divide: hidden_size is never split except as heads x head_dim,
and transformers (>= 5) lets the last rank hold a shorter slice of the vocabulary.
"""

from __future__ import annotations

from typing import Any

# sizes that must divide by the tensor-parallel size, in the order they are reported
DIVIDED_SIZES = ("num_attention_heads", "num_key_value_heads", "intermediate_size")
# projections whose output rows hold the attention keys (as transformers' get_kv_heads_per_rank)
KEY_PROJECTIONS = ("k_proj", "qkv_proj", "query_key_value")
MAX_TENSOR_PARALLEL = 16  # two nodes of 8 GPUs: the most the planner lists


def tp_plan_of(config: Any) -> dict[str, str]:
    """The config's own tensor-parallel plan (module pattern -> style); empty where transformers has none."""
    return dict(getattr(config, "base_model_tp_plan", None) or {})


def _kv_heads(config: Any) -> int:
    kv = getattr(config, "num_key_value_heads", None)
    return int(kv if kv is not None else config.num_attention_heads)


def check_tensor_parallel(config: Any, n: int) -> list[str]:
    """`name=value` for every size `n` does not divide (empty: `n` works). A model without a
    tp_plan cannot be split at all, which is named instead of a size."""
    if n < 1:
        raise ValueError(f"the tensor-parallel size must be at least 1; got {n}")
    if n == 1:
        return []
    if not tp_plan_of(config):
        return [f"model_type {getattr(config, 'model_type', '?')!r} has no tp_plan in transformers"]
    sizes = {"num_attention_heads": config.num_attention_heads, "num_key_value_heads": _kv_heads(config),
             "intermediate_size": getattr(config, "intermediate_size", None)}
    return [f"{name}={sizes[name]}" for name in DIVIDED_SIZES if sizes[name] is not None and sizes[name] % n]


def working_sizes(config: Any, limit: int = MAX_TENSOR_PARALLEL) -> list[int]:
    """Every tensor-parallel size up to `limit` the config allows: the powers of two that divide, and
    any other divisor (6 for a 48-head model)."""
    return [n for n in range(1, limit + 1) if not check_tensor_parallel(config, n)]


def refusal(config: Any, n: int) -> str | None:
    """The operator's message when `n` ranks cannot split this model, else None."""
    problems = check_tensor_parallel(config, n)
    if not problems:
        return None
    works = ", ".join(map(str, working_sizes(config)))
    if not tp_plan_of(config):
        return f"tensor parallelism over {n} ranks is impossible: {problems[0]}; only 1 works"
    return (f"tensor parallelism over {n} ranks does not divide {', '.join(problems)}; "
            f"sizes that work: {works}")


def kv_heads_per_rank(config: Any, n: int) -> int:
    """KV heads whose cache each rank holds: split only where the plan shards the key projection
    "colwise" (Llama, Mistral, Qwen2); a gathered projection (Phi-3's fused qkv_proj) keeps every
    head on every rank."""
    kv = _kv_heads(config)
    sharded = any(key.rsplit(".", 1)[-1] in KEY_PROJECTIONS and style == "colwise"
                  for key, style in tp_plan_of(config).items())
    if not sharded or n == 1:
        return kv
    if kv % n:
        raise ValueError(f"num_key_value_heads={kv} does not divide by {n}")
    return kv // n
