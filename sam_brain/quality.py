"""Score a parsed session on six dimensions in [0, 1] and sort it into tier A, B or C.

The dimensions are completion, depth, domain relevance, tool richness, thinking and error ratio
(higher is better for all six). The overall score is their weighted mean, and the tier follows
from it: A >= 0.7, B >= 0.4, C below. Each formula is simple on purpose and is written out in
docs/quality.md; the weights, thresholds and domain keywords live in `QualityConfig`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only the shape is needed; sam_brain must not import plug-ins at runtime
    from collectors.transcript import Conversation, Turn

DIMENSIONS = ("completion", "depth", "domain", "tools", "thinking", "errors")

# Software-development vocabulary; a session mentioning ~8 distinct terms is fully "on domain".
DEFAULT_KEYWORDS = (
    "api", "async", "branch", "bug", "build", "cache", "class", "cli", "commit", "compile",
    "config", "database", "debug", "deploy", "dependency", "docker", "endpoint", "error",
    "exception", "function", "git", "import", "implement", "javascript", "lint", "merge",
    "method", "migration", "module", "package", "parser", "pytest", "python", "query",
    "refactor", "regex", "repository", "rust", "schema", "script", "server", "sql",
    "stack trace", "test", "tests", "typescript", "variable",
)  # fmt: skip


@dataclass(frozen=True)
class QualityConfig:
    """Scoring knobs (see docs/quality.md for the formulas).

    Args:
        keywords: domain terms, matched case-insensitively as whole words.
        weights: dimension -> weight of the overall score (normalised by their sum).
        keyword_target: distinct keyword hits that give domain relevance 1.0.
        depth_target: assistant turns that give depth 1.0 (log scale).
        tool_kinds_target: distinct tools that give the "variety" half of tool richness 1.0.
        tool_calls_target: tool calls that give the "volume" half of tool richness 1.0.
        interrupt_penalty: subtracted from completion per user interrupt.
        tier_a: overall score at or above which a session is tier A.
        tier_b: overall score at or above which a session is tier B (else C).
    """

    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "completion": 0.25,
            "depth": 0.15,
            "domain": 0.15,
            "tools": 0.15,
            "thinking": 0.10,
            "errors": 0.20,
        }
    )
    keyword_target: int = 8
    depth_target: int = 20
    tool_kinds_target: int = 4
    tool_calls_target: int = 10
    interrupt_penalty: float = 0.1
    tier_a: float = 0.7
    tier_b: float = 0.4


@dataclass(frozen=True)
class Score:
    """Per-dimension scores, their weighted mean and the tier it falls in."""

    dims: dict[str, float]
    overall: float
    tier: str


def tier_for(overall: float, config: QualityConfig | None = None) -> str:
    """The tier of an overall score: "A" (>= tier_a), "B" (>= tier_b) or "C"."""
    config = config or QualityConfig()
    if overall >= config.tier_a:
        return "A"
    return "B" if overall >= config.tier_b else "C"


def exchanges(turns: list[Turn]) -> list[list[Turn]]:
    """Split turns at each user prompt and each event-triggered assistant turn.

    Turns before the first prompt, and those answering a background event (a finished task),
    form exchanges that start with an assistant turn.
    """
    groups: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user" or turn.trigger or not groups:
            groups.append([])
        groups[-1].append(turn)
    return groups


def _clip(value: float) -> float:
    return max(0.0, min(1.0, value))


def score_conversation(conv: Conversation, config: QualityConfig | None = None) -> Score:
    """Score one conversation (its own turns; subagents are scored on their own).

    Args:
        conv: A parsed conversation.
        config: Weights, thresholds and keywords; the defaults when None.

    Returns:
        The six dimension scores, the overall score and the tier.
    """
    config = config or QualityConfig()
    turns = conv.turns
    assistant = [t for t in turns if t.role == "assistant"]
    calls = [c for t in assistant for c in t.tool_calls]
    results = [r for t in turns for r in t.results]

    groups = [g for g in exchanges(turns) if any(t.role == "assistant" for t in g)]
    answered = sum(1 for g in groups if g[-1].role == "assistant" and g[-1].text)
    completion = answered / len(groups) if groups else 0.0
    completion -= config.interrupt_penalty * conv.interrupts

    depth = math.log1p(len(assistant)) / math.log1p(config.depth_target)

    text = "\n".join(t.text for t in turns if t.role in ("user", "assistant")).lower()
    pattern = r"\b(?:" + "|".join(re.escape(k.lower()) for k in config.keywords) + r")\b"
    hits = set(re.findall(pattern, text)) if config.keywords else set()
    domain = len(hits) / config.keyword_target

    kinds = len({c["name"] for c in calls})
    tools = 0.5 * min(1.0, kinds / config.tool_kinds_target)
    tools += 0.5 * min(1.0, len(calls) / config.tool_calls_target)

    thinking = 2 * sum(1 for t in assistant if t.thinking) / len(assistant) if assistant else 0.0

    errors = 1 - sum(1 for r in results if r["is_error"]) / len(results) if results else 1.0

    dims = {
        "completion": _clip(completion),
        "depth": _clip(depth),
        "domain": _clip(domain),
        "tools": _clip(tools),
        "thinking": _clip(thinking),
        "errors": _clip(errors),
    }
    total = sum(config.weights.get(d, 0.0) for d in DIMENSIONS) or 1.0
    overall = sum(dims[d] * config.weights.get(d, 0.0) for d in DIMENSIONS) / total
    overall = round(overall, 4)
    return Score(
        dims={d: round(v, 4) for d, v in dims.items()},
        overall=overall,
        tier=tier_for(overall, config),
    )
