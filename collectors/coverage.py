"""What share of a session's work reaches training: tool calls and assistant turns, seen vs taught.

`curate` fills one Counter per session with `tool_calls_seen`, `tool_calls_supervised`,
`assistant_turns_seen`, `assistant_turns_supervised` and every loss as
`tool_calls_lost:<reason>` / `assistant_turns_lost:<reason>`. Reasons: `abandoned_branch` (a
rewind left it off the kept path), `warmup_agent` and `acompact_agent` (subagent runs that are
not work), `before_first_prompt` (assistant turns before any prompt), `rejected` (the user
rejected or interrupted the call: a preference pair instead), `tier_<X>` / `subagent_tier_<X>`
(the quality tier gives no multi-turn samples), `single_turn_rest` (earlier turns of an exchange
taught as one prompt -> answer pair). Whatever is left is `unaccounted`, which should stay 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collectors.transcript import Conversation
    from collectors.transcript_lines import Turn

KINDS = ("tool_calls", "assistant_turns")


def has_work(turn: Turn, thinking: bool) -> bool:
    """True for an assistant turn that becomes a message (text, tool calls, or kept thinking)."""
    return turn.role == "assistant" and bool(
        turn.text or turn.tool_calls or (thinking and turn.thinking)
    )


def lose(coverage: Counter[str], turns: Iterable[Turn], reason: str, thinking: bool) -> None:
    """Count the assistant turns (and their tool calls) of `turns` as lost for `reason`."""
    for turn in turns:
        if has_work(turn, thinking):
            coverage[f"tool_calls_lost:{reason}"] += len(turn.tool_calls)
            coverage[f"assistant_turns_lost:{reason}"] += 1


def count_seen(
    conv: Conversation, turns: list[Turn], coverage: Counter[str], thinking: bool
) -> int:
    """Count a conversation's work as seen, and what it lost before curation.

    Args:
        conv: The conversation (its `lost` counts abandoned branches and dropped agents).
        turns: Its turns as curated (a subagent's may start with its Task prompt).
        coverage: The session's counter.
        thinking: Whether thinking-only turns become messages.

    Returns:
        The index of the first prompt in `turns` (`len(turns)` when there is none).
    """
    for turn in turns:
        if has_work(turn, thinking):
            coverage["tool_calls_seen"] += len(turn.tool_calls)
            coverage["assistant_turns_seen"] += 1
    for key, n in conv.lost.items():
        kind = key.partition(":")[0]
        coverage[f"{kind}_seen"] += n
        coverage[f"{kind}_lost:{key.partition(':')[2]}"] += n
    first = next((i for i, t in enumerate(turns) if t.role == "user"), len(turns))
    lose(coverage, turns[:first], "before_first_prompt", thinking)
    return first


def account(coverage: Counter[str]) -> None:
    """Add `<kind>_lost:unaccounted` for work neither taught nor lost for a named reason."""
    for kind in KINDS:
        lost = sum(n for k, n in coverage.items() if k.startswith(f"{kind}_lost:"))
        rest = coverage[f"{kind}_seen"] - coverage[f"{kind}_supervised"] - lost
        if rest:
            coverage[f"{kind}_lost:unaccounted"] += rest


def share(coverage: Counter[str] | dict[str, int], kind: str = "tool_calls") -> float:
    """Supervised share of what was seen (1.0 when nothing was seen)."""
    seen = coverage.get(f"{kind}_seen", 0)
    return coverage.get(f"{kind}_supervised", 0) / seen if seen else 1.0
