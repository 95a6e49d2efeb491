"""The stop checker: incremental text, stop strings across token boundaries, the hold-back window."""

from __future__ import annotations

import pytest

from server.engine.request import GenerationParams, TextOptions
from server.engine.stops import StopChecker, finish_reason
from tests.support.sentencepiece_like import build


class Chars:
    """Token id n is chr(n)."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False) -> str:
        return "".join(chr(i) for i in ids)


def ids(text: str) -> list[int]:
    return [ord(c) for c in text]


def text_of(tokens: list[int], stops: tuple[str, ...]) -> tuple[str, bool]:
    checker = StopChecker(Chars(), stops)
    return checker.add(tokens) + checker.flush(), checker.stopped


def test_streaming_holds_back_a_possible_stop_string_and_cuts_at_it() -> None:
    checker = StopChecker(Chars(), ("END",))
    released = [checker.add([t]) for t in ids("abcEN")]
    assert "".join(released) == "abc"  # "EN" could start "END": held back
    assert checker.add(ids("D tail")) == "" and checker.stopped
    assert checker.text == "abc" and checker.flush() == ""


def test_held_back_text_is_released_when_it_is_not_a_stop_string() -> None:
    checker = StopChecker(Chars(), ("END",))
    out = "".join(checker.add([t]) for t in ids("ab EN"))
    assert out == "ab "
    out += checker.add(ids("XYZ"))  # the window (len("END") - 1 characters) moves on
    assert out == "ab ENX" and not checker.stopped
    assert checker.flush() == "YZ"


def test_the_earliest_of_several_stop_strings_wins() -> None:
    assert text_of(ids("abc END x STOP"), ("STOP", "END")) == ("abc ", True)
    assert text_of(ids("abc"), ("x",)) == ("abc", False)
    assert text_of(ids("abc"), ()) == ("abc", False)


def test_a_kept_stop_string_ends_the_text_and_nothing_is_held_back() -> None:
    """Kaito and TGI (`strip_stop` off): the text ends with what the token that completed the stop
    string decoded to, and every token's text is released at once."""
    checker = StopChecker(Chars(), ("END",), TextOptions(strip_stop=False))
    released = [checker.add([t]) for t in ids("abcEN")]
    assert released == list("abcEN")  # nothing held back
    assert checker.add(ids("Dx")) == "Dx" and checker.stopped  # the stop string's token, whole
    assert checker.add(ids("more")) == "" and checker.flush() == ""
    assert checker.text == "abcENDx"


def test_a_stop_string_split_over_many_tokens_is_found() -> None:
    checker = StopChecker(Chars(), ("a long stop",))
    for t in ids("text then a long st"):
        checker.add([t])
    assert not checker.stopped
    checker.add(ids("op!"))
    assert checker.stopped and checker.text == "text then "


def test_finish_reason_order_eos_then_stop_then_length() -> None:
    p = GenerationParams(max_new_tokens=3, min_new_tokens=2, eos_token_ids=(0,), stop=("x",))
    hit = StopChecker(Chars(), p.stop)
    hit.add(ids("x"))
    assert finish_reason(p, 1, 0, None) is None  # EOS before min_new_tokens
    assert finish_reason(p, 2, 0, hit) == "eos"
    assert finish_reason(p, 2, ord("x"), hit) == "stop"
    assert finish_reason(p, 3, ord("y"), StopChecker(Chars(), p.stop)) == "length"
    assert finish_reason(p, 2, ord("y"), None) is None


@pytest.fixture(scope="module")
def sp_tokenizer(tmp_path_factory):
    return build(tmp_path_factory.mktemp("sp-tokenizer"))


def test_sentencepiece_spaces_across_token_boundaries(sp_tokenizer) -> None:
    """A Metaspace token decoded alone loses its space ("▁cat" -> "cat"): token-by-token text would
    read "thecatsat" and miss " cat". The checker decodes incrementally and finds it."""
    tokens = sp_tokenizer(" the cat sat", add_special_tokens=False)["input_ids"]
    assert "".join(sp_tokenizer.decode([t]) for t in tokens) == "thecatsat"
    checker = StopChecker(sp_tokenizer, (" cat",))
    released = [checker.add([t]) for t in tokens]
    assert checker.stopped and checker.text == "the"
    assert "".join(released) == "the"
