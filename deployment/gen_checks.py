"""The gate's checks of generated answers: repetition, end of turn, template markers, emptiness.

The prompts are the test rows' conversations up to their last answer (`prompts_from_rows`).

Measures only; `deployment.evaluate` decides what they mean (judged against the reference
model's answers to the same prompts).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from sam_brain.protocols import Message

TEMPLATE_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
)


@dataclass
class GenerationCheck:
    """One generated answer of the candidate and what was wrong with it."""

    prompt: str
    text: str
    repetition: float
    terminated: bool
    leaked: list[str]
    empty: bool


def prompts_from_rows(rows: list[list[Message]], count: int) -> list[list[Message]]:
    """The conversation before the last assistant turn of the first `count` usable rows."""
    prompts: list[list[Message]] = []
    for messages in rows:
        if len(prompts) >= count:
            break
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if last > 0:
            prompts.append(messages[:last])
    return prompts


def repetition_rate(tokens: Sequence[Hashable], n: int = 4) -> float:
    """Share of the token n-grams that repeat an earlier one (0 for fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def leaked_markers(text: str, markers: Sequence[str] = TEMPLATE_MARKERS) -> list[str]:
    """Chat-template markers that appear in a generated answer."""
    return sorted({m for m in markers if m and m in text})


def special_markers(tokenizer: Any) -> tuple[str, ...]:
    """The known template markers plus the tokenizer's own special tokens."""
    own = getattr(tokenizer, "all_special_tokens", None) or []
    return tuple(sorted(set(TEMPLATE_MARKERS) | {str(t) for t in own if len(str(t)) > 3}))
