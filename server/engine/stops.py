"""The stop checker: the one place that turns a sequence's tokens into text and finds stop strings.

The batched path, the exact lane, streaming and the final text all use `StopChecker`, so a stop
string is matched the same way everywhere: on incrementally decoded text (never token by token,
which drops the leading space of a SentencePiece token and splits multi-byte characters), and
across token boundaries. For streaming it also owns the hold-back window: text that could be the
start of a stop string is released only once it is known not to be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.engine.detokenize import IncrementalDetokenizer
from server.engine.request import FinishReason, GenerationParams

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class StopChecker:
    """Incremental text of one sequence, cut at the first of `stops`.

    `add` returns the text that may be released now; `flush` the rest at the end of the sequence.
    Once `stopped`, the text ends before the stop string and further tokens add nothing.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | Any, stops: tuple[str, ...] = (),
                 skip_special_tokens: bool = True, clean_up_tokenization_spaces: bool = False) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, skip_special_tokens, clean_up_tokenization_spaces)
        self.stops = tuple(stops)
        # the longest text that could be an unfinished stop string: held back while streaming
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.stopped = False
        self.released = 0  # characters of detok.text handed out
        self._searched = 0  # detok.text before this index holds no stop string start... up to `hold`

    @property
    def text(self) -> str:
        """The text so far, up to the stop string when one was found."""
        return self.detok.text[:self.released] if self.stopped else self.detok.text

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text that can be released (none after a stop string)."""
        if self.stopped:
            return ""
        self.detok.add(token_ids)
        return self._release(final=False)

    def flush(self) -> str:
        """End of the sequence: release whatever was held back (still cut at a stop string)."""
        if self.stopped:
            return ""
        self.detok.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.detok.text
        cut = self._find(text) if self.stops else -1
        if cut != -1:
            self.stopped = True
            end = cut
        elif final or not self.stops:
            end = len(text)
        else:
            end = max(self.released, len(text) - self.hold)
        delta = text[self.released:end]
        self.released = max(self.released, end)
        return delta

    def _find(self, text: str) -> int:
        """Earliest stop string in the text not yet searched (a match may start `hold` chars back)."""
        start = max(0, self._searched - self.hold)
        self._searched = len(text)
        best = -1
        for stop in self.stops:
            i = text.find(stop, start)
            if i != -1 and (best == -1 or i < best):
                best = i
        return best


def text_of(tokenizer: PreTrainedTokenizerBase | Any, token_ids: list[int], stops: tuple[str, ...] = (),
            skip_special_tokens: bool = True,
            clean_up_tokenization_spaces: bool = False) -> tuple[str, bool]:
    """The final text of a finished sequence, cut at the first stop string, and whether one was found."""
    checker = StopChecker(tokenizer, stops, skip_special_tokens, clean_up_tokenization_spaces)
    text = checker.add(token_ids) + checker.flush()
    return text, checker.stopped


def finish_reason(params: GenerationParams, generated: int, token: int,
                  checker: StopChecker | None) -> FinishReason | None:
    """Why a sequence ends after its `generated`-th token `token` (already added to `checker`), if it does.

    The one rule for both the batched path and the exact lane: EOS (once `min_new_tokens` are out),
    then a stop string, then the length limit.
    """
    if token in params.eos_token_ids and generated >= params.min_new_tokens:
        return "eos"
    if checker is not None and checker.stopped:
        return "stop"
    if generated >= params.max_new_tokens:
        return "length"
    return None
