"""The benchmark's requests: chat prompts of mixed length, greedy, a forced number of new tokens."""

from __future__ import annotations

TOPICS = [
    "the water cycle", "how a bicycle works", "the history of paper", "why the sky is blue",
    "volcanoes", "the moon's phases", "how bees make honey", "the rules of chess",
    "photosynthesis", "the printing press", "ocean tides", "how vaccines work",
    "the Roman empire", "black holes", "how a compiler works", "the invention of the telephone",
]


def messages(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    detail = " Use simple words." if i % 2 else " Give two examples and keep it short, please."
    return [{"role": "user", "content": f"Explain {topic}.{detail}"}]


def generate_kwargs(new_tokens: int) -> dict[str, object]:
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
