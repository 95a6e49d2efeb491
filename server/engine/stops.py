"""The stop checker: the one place that turns a sequence's tokens into text and finds stop strings.

The engine keeps one per sequence, on both lanes, and sends the text it releases with the tokens:
text is decoded once, with the request's `TextOptions`, and the API only renders it. Stop strings
are matched on that incrementally decoded text (never token by token, which drops the leading
space of a SentencePiece token and splits multi-byte characters), and across token boundaries.
When the stop string is cut from the text, it also owns the hold-back window: text that could be
the start of a stop string is released only once it is known not to be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from server.engine.detokenize import IncrementalDetokenizer
from server.engine.request import FinishReason, GenerationParams, TextOptions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class StopChecker:
    """Incremental text of one sequence, ended at the first of `stops`.

    `add` returns the text that may be released now; `flush` the rest at the end of the sequence.
    Once `stopped`, further tokens add nothing, and the text ends before the stop string, or, when
    `options.strip_stop` is off, with everything decoded up to the token that completed it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase | Any, stops: tuple[str, ...] = (),
                 options: TextOptions = TextOptions()) -> None:
        self.detok = IncrementalDetokenizer(tokenizer, options.skip_special_tokens,
                                            options.clean_up_tokenization_spaces)
        self.stops = tuple(stops)
        self.cut = options.strip_stop
        # the longest text that could be an unfinished stop string: searched again as text grows,
        # and held back while the stop string is to be cut
        self.span = max((len(s) for s in self.stops), default=1) - 1
        self.hold = self.span if self.cut else 0
        self.stopped = False
        self.released = 0  # characters of detok.text handed out
        self._searched = 0  # detok.text before this index was searched (a match may start `span` back)

    @property
    def text(self) -> str:
        """The text so far, up to the stop string when one was found (and is cut)."""
        return self.detok.text[:self.released] if self.stopped else self.detok.text

    def add(self, token_ids: list[int]) -> str:
        """Append tokens; return the text that can be released (none after a stop string)."""
        if self.stopped:
            return ""
        self.detok.add(token_ids)
        return self._release(final=False)

    def flush(self) -> str:
        """End of the sequence: release whatever was held back (still cut at a stop string)."""
        if self.stopped and self.cut:
            return ""
        self.detok.flush()
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        text = self.detok.text
        cut = self._find(text) if self.stops and not self.stopped else -1
        if cut != -1:
            self.stopped = True
            end = cut if self.cut else len(text)
        elif final or not self.stops:
            end = len(text)
        else:
            end = max(self.released, len(text) - self.hold)
        delta = text[self.released:end]
        self.released = max(self.released, end)
        return delta

    def _find(self, text: str) -> int:
        """Earliest stop string in the text not yet searched (a match may start `span` chars back)."""
        start = max(0, self._searched - self.span)
        self._searched = len(text)
        best = -1
        for stop in self.stops:
            i = text.find(stop, start)
            if i != -1 and (best == -1 or i < best):
                best = i
        return best


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
