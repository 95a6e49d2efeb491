"""The GPU benchmark's synthetic pieces that need no model: bandwidth table, prompts, tokenizer."""

from __future__ import annotations

from bench import synthetic


def test_bandwidth_table_matches_device_names() -> None:
    assert synthetic.bandwidth_gbs("NVIDIA H200") == 4800
    assert synthetic.bandwidth_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert synthetic.bandwidth_gbs("NVIDIA A100-SXM4-80GB") == 2039
    assert synthetic.bandwidth_gbs("Some Future Card") is None


def test_prompt_of_k_words_is_k_tokens() -> None:
    tok = synthetic._tokenizer(1024)
    prompts = [synthetic.prompt(i, 16, 1024) for i in range(4)]
    assert len(set(prompts)) == 4
    for p in prompts:
        ids = tok(p).input_ids
        assert len(ids) == 16 and max(ids) < 1021  # no special or unknown tokens


def test_shapes() -> None:
    name, arch, _ = synthetic.architecture("llama-3.1-8b-instruct")
    assert name == "llama-3.1-8b-instruct" and arch.vocab_size == 128256
    assert synthetic.architecture("1b")[1].hidden_size == 2048
