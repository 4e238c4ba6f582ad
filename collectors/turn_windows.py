"""A session's turns as chat messages, cut into windows that fit the training length.

`to_messages` turns user, assistant and tool turns into the chat format mlx-lm and TRL accept
(`role`/`content`, assistant `tool_calls` in the OpenAI function shape, `tool` messages with
`tool_call_id`); `windows` packs whole exchanges into windows within the token budget and cuts a
longer exchange between its steps (`sam_brain.pipeline.windowing`). collectors/curate.py turns
the windows into samples by strategy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from collectors.rejected import is_rejection, pairs
from collectors.transcript_context import user_content
from sam_brain.pipeline.windowing import (
    TokenCount,
    build,
    estimate_tokens,
    plan,
    supervised,
    tools_tokens,
)
from sam_brain.protocols import Message

if TYPE_CHECKING:  # only the shape is needed
    from collectors.transcript_lines import Turn

EMPTY_OUTPUT = "(no output)"  # chat templates and the validator reject empty tool messages
# Tool-call arguments as `json.dumps(input, ensure_ascii=False)` writes them; one encoder, not one
# per call (decoded JSON holds no cycles, so the circular check is left out).
_arguments = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode


@dataclass(frozen=True)
class CurateOptions:
    """How conversations become samples.

    Args:
        thinking: prefix assistant content with `<think>...</think>` when the turn has thinking.
        tool_output_chars: longest tool output kept; longer ones keep head and tail around a marker.
        system_prompt: an optional system message put first in every sample.
        multi_turn_tiers: tiers whose sessions give a strategy A sample.
        single_turn_tiers: tiers whose sessions give strategy B samples.
        subagent_tiers: tiers (of the subagent run's own score) that give strategy D samples.
        max_tokens: token budget of a strategy A or D window (the training profile's
            `max_seq_length`); a longer exchange is cut inside itself between steps.
        count: tokens of one message: the base model's tokenizer when it is on disk
            (`collectors.tokens`), else the conservative `windowing.estimate_tokens`.
    """

    thinking: bool = True
    tool_output_chars: int = 2000
    system_prompt: str = ""
    multi_turn_tiers: tuple[str, ...] = ("A",)
    single_turn_tiers: tuple[str, ...] = ("A", "B")
    subagent_tiers: tuple[str, ...] = ("A", "B")
    max_tokens: int = 4096
    count: TokenCount = estimate_tokens


def truncate(text: str, limit: int) -> str:
    """Keep the head and tail of `text` (3:1) with a marker naming how much was cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    tail = limit // 4
    head = limit - tail
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} chars truncated ...]\n{text[len(text) - tail :]}"


def _assistant_content(turn: Turn, thinking: bool) -> str:
    if thinking and turn.thinking:
        return f"<think>\n{turn.thinking}\n</think>\n\n{turn.text}".rstrip()
    return turn.text


def to_messages(turns: list[Turn], options: CurateOptions) -> list[Message]:
    """Chat messages for a run of turns, starting at the first user turn, ending on the assistant.

    Args:
        turns: Conversation turns (user, assistant, tool).
        options: Thinking and truncation settings.
    """
    return _finish(_raw_messages(turns, options), options)


def _raw_messages(turns: list[Turn], options: CurateOptions) -> list[Message]:
    """`to_messages` before its trailing unsupervised messages are cut and the system added.

    For runs that each start with a user turn, the raw messages of the runs joined are the
    runs' raw messages joined: each run's first message does not depend on what came before.
    """
    return _owned_messages(turns, options)[0]


def _owned_messages(
    turns: list[Turn], options: CurateOptions
) -> tuple[list[Message], list[list[Turn]]]:
    """`_raw_messages`, and the turns each message was made from.

    An assistant message with a call the user rejected or interrupted gets `weight: 0`: the
    action is shown as context, never taught (`preference_pairs` makes it a rejected answer).
    """
    rejected = {
        r["tool_use_id"] for t in turns if t.role == "tool" for r in t.results if is_rejection(r)
    }
    messages: list[Message] = []
    owners: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user":
            messages.append(
                {"role": "user", "content": user_content(turn, options.tool_output_chars)}
            )
            owners.append([turn])
        elif turn.role == "assistant" and messages:
            content = _assistant_content(turn, options.thinking)
            if not (content or turn.tool_calls):
                continue
            if messages[-1]["role"] == "assistant" and not turn.tool_calls:
                # Two assistant messages in a row (a dropped event or interrupt between): join them.
                messages[-1]["content"] = "\n\n".join(
                    p for p in (messages[-1]["content"], content) if p
                )
                owners[-1].append(turn)
                continue
            msg: Message = {"role": "assistant", "content": content}
            if turn.tool_calls:
                msg["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {
                            "name": c["name"],
                            "arguments": _arguments(c["input"]),
                        },
                    }
                    for c in turn.tool_calls
                ]
                if rejected and any(c["id"] in rejected for c in turn.tool_calls):
                    msg["weight"] = 0
            messages.append(msg)
            owners.append([turn])
        elif turn.role == "tool" and messages and messages[-1]["role"] in ("assistant", "tool"):
            for r in turn.results:
                content = truncate(r["content"], options.tool_output_chars) or EMPTY_OUTPUT
                messages.append(
                    {"role": "tool", "tool_call_id": r["tool_use_id"], "content": content}
                )
                owners.append([turn])
    return messages, owners


def _finish(raw: list[Message], options: CurateOptions) -> list[Message]:
    messages = list(raw)
    while messages and not supervised(messages[-1]):
        messages.pop()
    if messages and options.system_prompt:
        messages.insert(0, {"role": "system", "content": options.system_prompt})
    return messages


def _budget(options: CurateOptions) -> int:
    """Tokens a window's body may use: the budget less the system prompt, if any."""
    if not options.system_prompt:
        return options.max_tokens
    return options.max_tokens - options.count({"role": "system", "content": options.system_prompt})


@dataclass
class _Cut:
    """One window of a conversation: its turns (anchor first), messages and what it teaches."""

    turns: list[Turn]
    messages: list[Message]
    tool_calls: int  # supervised tool calls
    assistant_turns: int  # supervised assistant turns
    pairs: list[tuple[list[Message], Message, Message]]  # (prompt, rejected, chosen)
    rejected: list[Turn]  # turns whose call the user rejected, held outside the context


def windows(turns: list[Turn], options: CurateOptions) -> list[tuple[list[Turn], list[Message]]]:
    """Cut turns into windows within the budget, every assistant turn supervised in exactly one.

    Whole exchanges (a user prompt and everything up to the next one) are packed greedily, in
    order, so a grown session keeps its earlier windows; an exchange longer than the budget is
    cut inside itself between steps (see `sam_brain.pipeline.windowing`). Turns before the first
    prompt are left out (`coverage` counts them).

    Args:
        turns: Conversation turns (user, assistant, tool).
        options: Budget, token count, thinking and truncation settings.

    Returns:
        Each window's turns (the first one, the anchor, is its first supervised turn when the
        window repeats a prompt) and chat messages; windows that teach nothing are left out.
    """
    return [(cut.turns, cut.messages) for cut in _cuts(turns, options)]


def _cuts(turns: list[Turn], options: CurateOptions) -> list[_Cut]:
    first = next((i for i, t in enumerate(turns) if t.role == "user"), len(turns))
    raw, owners = _owned_messages(turns[first:], options)
    out: list[_Cut] = []
    # The tools block of the whole conversation bounds the block of any window cut from it.
    budget = _budget(options) - tools_tokens(raw, options.count)
    for window in plan(raw, budget, options.count):
        messages = build(raw, window)
        if not messages:
            continue
        own = [i for i in window.indices if i not in window.context]
        taught = [i for i in own if supervised(raw[i])]
        refused = [i for i in own if raw[i].get("role") == "assistant" and i not in taught]
        # A repeated prompt does not name the window: its first supervised turn does.
        lead = taught[:1] if window.context or window.elided else []
        order = lead + [i for i in window.indices if i not in lead]
        out.append(
            _Cut(
                turns=[t for i in order for t in owners[i]],
                messages=_finish(messages, options),
                tool_calls=sum(len(raw[i].get("tool_calls") or ()) for i in taught),
                assistant_turns=sum(len(owners[i]) for i in taught),
                pairs=pairs(raw, window, options.system_prompt),
                rejected=[t for i in refused for t in owners[i]],
            )
        )
    return out
