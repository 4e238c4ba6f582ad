"""Turn a scored session into chat training samples, by curation strategy.

Strategy A: the main conversation as multi-turn samples (tier A sessions only), cut into windows
of consecutive whole exchanges (a user prompt up to the next one) that each fit the token budget,
so a long session gives several samples instead of one the validator must trim or drop.
Strategy B: one single-turn sample per exchange, the user prompt and the final assistant answer
of that exchange (tiers A and B). Strategy D: each subagent run as "Task prompt -> subagent
conversation" (subagent runs scored tier A or B). Strategy C (docs and skills) is another
collector's. Messages use the chat format mlx-lm and TRL accept: `role`/`content`, assistant
`tool_calls` in the OpenAI function shape, and `tool` messages with `tool_call_id`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace  # `Turn` is a msgspec Struct

from collectors.quality import QualityConfig, Score, exchanges, score_conversation, score_window
from collectors.transcript_context import user_content
from sam_brain.pipeline.validate import CHARS_PER_TOKEN, message_chars
from sam_brain.protocols import Message, Sample, stable_id

if TYPE_CHECKING:  # only the shape is needed; sam_brain must not import plug-ins at runtime
    from collectors.transcript import Conversation
    from collectors.transcript_lines import Turn

SOURCE = "sessions"
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
        max_tokens: token budget of a strategy A window (estimated as the validator does); one
            exchange longer than this is still emitted alone, for the validator to trim or drop.
    """

    thinking: bool = True
    tool_output_chars: int = 2000
    system_prompt: str = ""
    multi_turn_tiers: tuple[str, ...] = ("A",)
    single_turn_tiers: tuple[str, ...] = ("A", "B")
    subagent_tiers: tuple[str, ...] = ("A", "B")
    max_tokens: int = 4096


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
    """`to_messages` before its trailing non-assistant messages are cut and the system added.

    For runs that each start with a user turn, the raw messages of the runs joined are the
    runs' raw messages joined: each run's first message does not depend on what came before.
    """
    messages: list[Message] = []
    for turn in turns:
        if turn.role == "user":
            messages.append(
                {"role": "user", "content": user_content(turn, options.tool_output_chars)}
            )
        elif turn.role == "assistant" and messages:
            content = _assistant_content(turn, options.thinking)
            if not (content or turn.tool_calls):
                continue
            if messages[-1]["role"] == "assistant" and not turn.tool_calls:
                # Two assistant messages in a row (a dropped event or interrupt between): join them.
                messages[-1]["content"] = "\n\n".join(
                    p for p in (messages[-1]["content"], content) if p
                )
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
            messages.append(msg)
        elif turn.role == "tool" and messages and messages[-1]["role"] in ("assistant", "tool"):
            for r in turn.results:
                content = truncate(r["content"], options.tool_output_chars) or EMPTY_OUTPUT
                messages.append(
                    {"role": "tool", "tool_call_id": r["tool_use_id"], "content": content}
                )
    return messages


def _finish(raw: list[Message], options: CurateOptions) -> list[Message]:
    messages = list(raw)
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if messages and options.system_prompt:
        messages.insert(0, {"role": "system", "content": options.system_prompt})
    return messages


def windows(turns: list[Turn], options: CurateOptions) -> list[tuple[list[Turn], list[Message]]]:
    """Cut turns into consecutive, non-overlapping windows of whole exchanges within the budget.

    An exchange is a user prompt and everything up to the next one; turns before the first prompt
    are left out. Exchanges are packed greedily, in order, while the window's messages fit
    `options.max_tokens` (`validate.estimate_tokens`), so a grown session keeps its earlier windows.

    Args:
        turns: Conversation turns (user, assistant, tool).
        options: Budget, thinking and truncation settings.

    Returns:
        Each window's turns and chat messages (windows that give no messages are left out).
    """
    groups: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user":
            groups.append([])
        if groups:
            groups[-1].append(turn)
    out: list[tuple[list[Turn], list[Message]]] = []
    window: list[Turn] = []
    raw: list[Message] = []
    # The window's size in `message_chars`: all of `raw`, and what `_finish` keeps of it (up to
    # its last assistant message), so each try costs one exchange, not the whole window again.
    total = kept = 0
    system = message_chars({"role": "system", "content": options.system_prompt})
    for group in groups:
        # Each exchange is turned into messages once (see _raw_messages), not once per window try.
        raw_group = _raw_messages(group, options)
        group_total = group_kept = 0
        for message in raw_group:
            group_total += message_chars(message)
            if message["role"] == "assistant":
                group_kept = group_total
        tried = total + group_kept if group_kept else kept  # what _finish(raw + raw_group) keeps
        size = tried + system if tried and options.system_prompt else tried
        if window and size // CHARS_PER_TOKEN + 1 > options.max_tokens:  # as estimate_tokens
            out.append((window, _finish(raw, options)))
            window, raw = list(group), raw_group
            total, kept = group_total, group_kept
        else:
            window.extend(group)
            raw.extend(raw_group)
            kept = tried
            total += group_total
    if window:
        out.append((window, _finish(raw, options)))
    return [(w, m) for w, m in out if m]


def _meta(conv: Conversation, turns: list[Turn], strategy: str, tier: str) -> dict[str, Any]:
    return {
        "path": str(conv.path),
        "session_id": conv.session_id,
        "cwd": conv.cwd,
        "git_branch": conv.git_branch,
        "version": conv.version,
        "started": conv.started,
        "ended": conv.ended,
        "uuids": [u for t in turns for u in t.uuids],
        "agent_id": conv.agent_id,
        "parent_tool_use_id": conv.parent_tool_use_id,
        "task_prompt": str(conv.task["input"].get("prompt", "")) if conv.task else "",
        "strategy": strategy,
        "tier": tier,
    }


def _sample(
    main: Conversation,
    conv: Conversation,
    turns: list[Turn],
    messages: list[Message],
    strategy: str,
    score: Score,
    ready_after: float,
) -> Sample:
    anchor = turns[0].uuids[0] if turns and turns[0].uuids else ""
    score = score_window(turns, session=score)  # the sample's own turns, not its session's
    return Sample(
        id=stable_id(SOURCE, main.session_id, strategy, anchor),
        source=SOURCE,
        source_key=str(main.path),
        group=main.session_id,
        messages=messages,
        strategy=strategy,
        tier=score.tier,
        score=score.overall,
        scores=dict(score.dims),
        meta=_meta(conv, turns, strategy, score.tier),
        ready_after=ready_after,
    )


def curate(
    conv: Conversation,
    options: CurateOptions | None = None,
    quality: QualityConfig | None = None,
    ready_after: float = 0.0,
) -> list[Sample]:
    """Samples of strategies A, B and D for one session and its subagents.

    Args:
        conv: The main conversation, subagents attached.
        options: Strategy and formatting options; the defaults when None.
        quality: Scoring configuration; the defaults when None.
        ready_after: Unix time before which the samples are not trainable.

    Returns:
        Samples with stable ids: re-curating the same (or a grown) session gives the same ids.
    """
    options = options or CurateOptions()
    score = score_conversation(conv, quality)
    samples: list[Sample] = []
    if score.tier in options.multi_turn_tiers:
        for turns, messages in windows(conv.turns, options):
            samples.append(_sample(conv, conv, turns, messages, "A", score, ready_after))
    if score.tier in options.single_turn_tiers:
        for group in exchanges(conv.turns):
            prompt, answer = group[0], group[-1]
            if prompt.role != "user" or answer.role != "assistant" or not answer.text:
                continue  # no prompt (event or headless start) or no final answer (interrupted)
            pair = [prompt, replace(answer, tool_calls=[])]
            messages = to_messages(pair, options)
            samples.append(_sample(conv, conv, pair, messages, "B", score, ready_after))
    for sub in conv.subagents:
        samples.extend(_subagent_sample(conv, sub, options, quality, ready_after))
    return samples


def _subagent_sample(
    main: Conversation,
    sub: Conversation,
    options: CurateOptions,
    quality: QualityConfig | None,
    ready_after: float,
) -> list[Sample]:
    score = score_conversation(sub, quality)
    if score.tier not in options.subagent_tiers:
        return []
    turns = list(sub.turns)
    prompt = str(sub.task["input"].get("prompt", "")) if sub.task else ""
    if turns and turns[0].role != "user" and prompt:
        # Some subagent files start with the assistant; the Task call holds the prompt.
        first = replace(turns[0], role="user", text=prompt, thinking="", tool_calls=[], results=[])
        turns.insert(0, replace(first, uuids=[sub.parent_tool_use_id], trigger=""))
    messages = to_messages(turns, options)
    if not messages:
        return []
    return [_sample(main, sub, turns, messages, "D", score, ready_after)]
