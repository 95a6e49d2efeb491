"""A tiny SentencePiece-style tokenizer (Metaspace: a word's leading space is part of its token,
and decoding a token alone drops it), built with `tokenizers` in a folder: no hub, no model."""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "big", "red", "sun", "hot"]
SPECIAL = ["<unk>", "<s>", "</s>"]


def build(folder: Path) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL + [f"▁{w}" for w in WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")
    fast.save_pretrained(folder)
    return fast
