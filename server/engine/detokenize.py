"""Incremental detokenisation: turn a growing list of token ids into text deltas.

Decoding token by token loses the spaces that BPE tokenizers attach to the next token and splits
multi-byte characters; decoding a sliding window and emitting only complete text avoids both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only a type: the scheduling policy uses this module without loading transformers
    from transformers import PreTrainedTokenizerBase


class IncrementalDetokenizer:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, skip_special_tokens: bool = True,
                 clean_up_tokenization_spaces: bool = False) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.cleanup = clean_up_tokenization_spaces
        self.ids: list[int] = []
        self._prefix = 0  # start of the window whose text was already emitted
        self._read = 0  # end of what was emitted
        self.text = ""

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special,
                                     clean_up_tokenization_spaces=self.cleanup)

    def add(self, token_ids: list[int]) -> str:
        """Append tokens and return the newly completed text (may be empty)."""
        self.ids.extend(token_ids)
        prefix_text = self._decode(self.ids[self._prefix:self._read])
        new_text = self._decode(self.ids[self._prefix:])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text):]
            self._prefix, self._read = self._read, len(self.ids)
            self.text += delta
            return delta
        return ""

    def flush(self) -> str:
        """Return whatever is still held back at the end of a sequence."""
        full = self._decode(self.ids)
        delta = full[len(self.text):] if full.startswith(self.text) else ""
        self.text += delta
        return delta
