from __future__ import annotations

import pytest

from server.engine.errors import InvalidParams
from server.engine.params import ModelLimits, build_params

LIMITS = ModelLimits(context_length=100, eos_token_ids=(2,), pad_token_id=2, vocab_size=1000,
                     generation_defaults={"bos_token_id": 1, "eos_token_id": 2})
KAITO = {"max_length": 50, "do_sample": True, "top_k": 10, "temperature": 1.0}


def test_max_length_counts_the_prompt() -> None:
    p = build_params({}, prompt_tokens=20, limits=LIMITS, dialect_defaults=KAITO)
    assert p.max_new_tokens == 30 and p.do_sample and p.top_k == 10


def test_client_max_new_tokens_wins_over_max_length() -> None:
    p = build_params({"max_new_tokens": 7}, 20, LIMITS, KAITO)
    assert p.max_new_tokens == 7
    p = build_params({"max_length": 25}, 20, LIMITS, KAITO)
    assert p.max_new_tokens == 5


def test_min_length_becomes_min_new_tokens() -> None:
    assert build_params({"min_length": 25, "max_new_tokens": 10}, 20, LIMITS).min_new_tokens == 5
    assert build_params({"min_new_tokens": 3, "max_new_tokens": 10}, 20, LIMITS).min_new_tokens == 3


def test_null_means_not_given() -> None:
    p = build_params({"do_sample": None, "bad_words_ids": None}, 5, LIMITS, KAITO)
    assert p.do_sample is True and "bad_words_ids" not in p.extra_dict


def test_temperature_zero_is_greedy() -> None:
    p = build_params({"temperature": 0, "max_new_tokens": 5}, 5, LIMITS, KAITO)
    assert p.do_sample is False


def test_other_options_pass_through_to_generate() -> None:
    p = build_params({"num_beams": 3, "length_penalty": 0.5, "max_new_tokens": 5, "do_sample": False},
                     5, LIMITS)
    kw = p.generate_kwargs()
    assert kw["num_beams"] == 3 and kw["length_penalty"] == 0.5 and kw["eos_token_id"] == [2]


def test_stop_strings_and_seed() -> None:
    p = build_params({"stop_strings": ["\n", "END"], "seed": 7, "max_new_tokens": 5}, 5, LIMITS)
    assert p.stop == ("\n", "END") and p.seed == 7


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"foo": 1}, "foo"),
        ({"constraints": []}, "constraints"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 1.5}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 2}, "top_p"),
        ({"top_k": -3}, "top_k"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"do_sample": 1}, "do_sample"),
        ({"num_return_sequences": 100}, "num_return_sequences"),
        ({"max_new_tokens": 95}, "context length"),
        ({"max_length": 10}, "max_length"),
        ({"eos_token_id": 5000}, "vocabulary"),
        ({"stop_strings": [""]}, "stop"),
        ({"num_return_sequences": 2, "do_sample": False, "max_new_tokens": 5}, "num_return_sequences"),
        ({"watermarking_config": 0.5}, "watermarking_config"),
        ({"bad_words_ids": []}, "bad_words_ids"),
        ({"bad_words_ids": [[]]}, "bad_words_ids"),
        ({"bad_words_ids": [[5000]]}, "bad_words_ids"),
        ({"suppress_tokens": [-1]}, "suppress_tokens"),
        ({"forced_eos_token_id": 99999}, "forced_eos_token_id"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, needle: str) -> None:
    with pytest.raises(InvalidParams, match=needle):
        build_params(kwargs, 20, LIMITS)


def test_not_a_dict() -> None:
    with pytest.raises(InvalidParams):
        build_params([], 5, LIMITS)  # type: ignore[arg-type]


def test_prompt_lookup_is_the_engines_own_speculative_decoding() -> None:
    p = build_params({"prompt_lookup_num_tokens": 6, "max_matching_ngram_size": 3, "max_new_tokens": 5},
                     5, LIMITS)
    assert (p.draft_tokens, p.draft_ngram) == (6, 3)
    assert "prompt_lookup_num_tokens" not in p.generate_kwargs()  # the exact lane decodes as usual
    assert build_params({"max_new_tokens": 5}, 5, LIMITS).draft_tokens == 0
    server_default = ModelLimits(100, (2,), 2, 1000, {"prompt_lookup_num_tokens": 8})
    assert build_params({"max_new_tokens": 5}, 5, server_default).draft_tokens == 8
    off = build_params({"max_new_tokens": 5, "prompt_lookup_num_tokens": 0}, 5, server_default)
    assert off.draft_tokens == 0
    for bad in ({"prompt_lookup_num_tokens": 33}, {"prompt_lookup_num_tokens": -1},
                {"max_matching_ngram_size": 0}, {"prompt_lookup_num_tokens": "8"}):
        with pytest.raises(InvalidParams):
            build_params({**bad, "max_new_tokens": 5}, 5, LIMITS)
