"""OpenAI's logprob shapes: chat's `logprobs.content[]` entries, the legacy completions `logprobs`
object, and the per-choice bookkeeping a stream needs to send each token's logprob exactly once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.api.common import engine_calls
from server.engine.engine import Engine
from server.engine.request import GenerationRequest, SequenceResult

TopLogprobs = list[list[tuple[int, float]]]


@dataclass
class ChoiceState:
    """Per-choice state while streaming: token ids and logprobs seen, and what was sent."""

    ids: list[int] = field(default_factory=list)
    lps: list[float] = field(default_factory=list)
    tops: TopLogprobs = field(default_factory=list)
    sent_lp: int = 0
    tokens: int = 0
    text_offset: int = 0

    def add(self, d: engine_calls.TextDelta) -> None:
        self.ids.extend(d.token_ids)
        self.tokens += len(d.token_ids)
        if d.logprobs:
            self.lps.extend(d.logprobs)
            self.tops.extend(d.top_logprobs or [[] for _ in d.logprobs])

    def unsent_logprobs(self, engine: Engine, req: GenerationRequest, final: bool,
                        special: set[int]) -> tuple[list[int], list[float], TopLogprobs]:
        """Tokens (special ones left out) whose logprobs are known and not sent yet; at the end,
        fills any the engine did not stream (exact lane) by scoring."""
        if final and len(self.lps) < len(self.ids):
            seq = SequenceResult(token_ids=self.ids, logprobs=self.lps, top_logprobs=self.tops)
            engine_calls.ensure_logprobs(engine, req, seq)
            self.lps, self.tops = seq.logprobs, seq.top_logprobs
        end = min(len(self.ids), len(self.lps))
        keep = [k for k in range(self.sent_lp, end) if self.ids[k] not in special]
        self.sent_lp = max(self.sent_lp, end)
        return ([self.ids[k] for k in keep], [self.lps[k] for k in keep],
                [self.tops[k] if k < len(self.tops) else [] for k in keep])


def token_text(engine: Engine, tid: int) -> str:
    return engine.tokenizer.decode([tid], skip_special_tokens=False)


def chat_logprobs(engine: Engine, ids: list[int], lps: list[float],
                  tops: TopLogprobs | None) -> list[dict[str, Any]]:
    """Chat's `logprobs.content[]`: token, logprob, bytes and top_logprobs per token."""
    entries = []
    for k, (tid, lp) in enumerate(zip(ids, lps, strict=False)):
        text = token_text(engine, tid)
        top = [{"token": (t := token_text(engine, i)), "logprob": v, "bytes": list(t.encode())}
               for i, v in (tops[k] if tops and k < len(tops) else [])]
        entries.append({"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": top})
    return entries


def legacy_logprobs(engine: Engine, ids: list[int], lps: list[float | None], tops: list[Any] | None,
                    offset: int, want_top: bool) -> dict[str, Any]:
    """Legacy completions' `logprobs`: tokens, token_logprobs, top_logprobs and text_offset."""
    tokens = [token_text(engine, t) for t in ids]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    top_out: list[dict[str, float] | None] | None = None
    if want_top:
        top_out = [({token_text(engine, i): v for i, v in tops[k]}
                    if tops and k < len(tops) and tops[k] is not None else None) for k in range(len(ids))]
    return {"tokens": tokens, "token_logprobs": list(lps), "top_logprobs": top_out, "text_offset": offsets}


def visible_tokens(engine: Engine, token_ids: list[int], text_len: int) -> int:
    """How many leading tokens produce the returned text (drops EOS and tokens after a stop)."""
    pos = 0
    for k, piece in enumerate(engine_calls.token_texts(engine, token_ids)):
        if pos >= text_len:
            return k
        pos += len(piece)
    return len(token_ids)


def keep_best(engine: Engine, reqs: list[GenerationRequest], results: list[list[SequenceResult]],
              per_prompt: int, keep: int) -> list[tuple[GenerationRequest, SequenceResult]]:
    """Keep the `keep` candidates of each prompt with the highest total logprob (OpenAI best_of)."""
    out = []
    for p in range(0, len(reqs), per_prompt):
        group = [(reqs[j], results[j][0]) for j in range(p, p + per_prompt)]
        if keep < per_prompt:
            for r, res in group:
                engine_calls.ensure_logprobs(engine, r, res)
            group.sort(key=lambda rr: -sum(rr[1].logprobs))
        out.extend(group[:keep])
    return out
