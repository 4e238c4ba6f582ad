"""Turn a scored session into chat training samples, by curation strategy.

Strategy A: the main conversation as multi-turn samples (tier A sessions only), cut into windows
that fit the training length (`sam_brain.pipeline.windowing`): whole exchanges packed together,
and an exchange too long for one window cut between its steps, each window repeating the prompt
with the steps before as unsupervised context, so every assistant turn is taught exactly once.
Strategy B: the user prompt and final answer of an exchange that made no tool call, for sessions
that give no A windows (tier B), so an answer never claims an action it did not take. Strategy D:
each subagent run as "Task prompt -> subagent conversation", windowed like A (subagent runs
scored tier A or B). A tool call the user rejected is never taught: it becomes a preference pair
(`collectors/rejected.py`). Strategy C (docs and skills) is another collector's. The messages
and windows themselves are collectors/turn_windows.py's.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace  # `Turn` is a msgspec Struct

from collectors.coverage import account, count_seen, lose
from collectors.quality import QualityConfig, Score, exchanges, score_conversation, score_window
from collectors.rejected import as_text
from collectors.turn_windows import CurateOptions, _Cut, _cuts, to_messages
from sam_brain.protocols import Sample, stable_id

if TYPE_CHECKING:  # only the shape is needed; sam_brain must not import plug-ins at runtime
    from collectors.transcript import Conversation
    from collectors.transcript_lines import Turn

SOURCE = "sessions"


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
    cut: _Cut,
    strategy: str,
    score: Score,
    ready_after: float,
) -> Sample:
    turns = cut.turns
    anchor = turns[0].uuids[0] if turns and turns[0].uuids else ""
    score = score_window(turns, session=score)  # the sample's own turns, not its session's
    meta = _meta(conv, turns, strategy, score.tier)
    meta["supervised"] = {"tool_calls": cut.tool_calls, "assistant_turns": cut.assistant_turns}
    return Sample(
        id=stable_id(SOURCE, main.session_id, strategy, anchor),
        source=SOURCE,
        source_key=str(main.path),
        group=main.session_id,
        messages=cut.messages,
        strategy=strategy,
        tier=score.tier,
        score=score.overall,
        scores=dict(score.dims),
        meta=meta,
        ready_after=ready_after,
    )


def _pair_samples(
    main: Conversation, conv: Conversation, cut: _Cut, score: Score, ready_after: float
) -> list[Sample]:
    """One preference sample per rejected call: the rejected action vs. the next accepted one."""
    out = []
    for prompt, rejected, chosen in cut.pairs:
        call = rejected["tool_calls"][0]["id"]
        meta = _meta(conv, cut.turns, "rejected_call", score.tier)
        meta["rejected_call"] = call
        out.append(
            Sample(
                id=stable_id(SOURCE, main.session_id, "preference", call),
                source=SOURCE,
                source_key=str(main.path),
                group=main.session_id,
                messages=prompt,
                kind="preference",
                strategy="A",
                tier=score.tier,
                score=score.overall,
                scores=dict(score.dims),
                chosen=as_text(chosen),
                rejected=as_text(rejected),
                meta=meta,
                ready_after=ready_after,
            )
        )
    return out


def curate(
    conv: Conversation,
    options: CurateOptions | None = None,
    quality: QualityConfig | None = None,
    ready_after: float = 0.0,
    coverage: Counter[str] | None = None,
) -> list[Sample]:
    """Samples of strategies A, B and D (and rejected-call preference pairs) for one session.

    Strategy B only takes exchanges without tool calls, and only from sessions that give no A
    windows, so no answer claims an action it did not take and no text is taught twice.

    Args:
        conv: The main conversation, subagents attached.
        options: Strategy and formatting options; the defaults when None.
        quality: Scoring configuration; the defaults when None.
        ready_after: Unix time before which the samples are not trainable.
        coverage: When given, receives what was seen, taught and lost (see `collectors.coverage`).

    Returns:
        Samples with stable ids: re-curating the same (or a grown) session gives the same ids.
    """
    options = options or CurateOptions()
    coverage = Counter() if coverage is None else coverage
    score = score_conversation(conv, quality)
    samples: list[Sample] = []
    first = count_seen(conv, conv.turns, coverage, options.thinking)
    if score.tier in options.multi_turn_tiers:
        samples += _taught(
            conv, conv, _cuts(conv.turns, options), "A", score, ready_after, coverage
        )
    else:
        samples += _single_turn(conv, conv.turns[first:], options, score, ready_after, coverage)
    for sub in conv.subagents:
        samples.extend(_subagent_samples(conv, sub, options, quality, ready_after, coverage))
    account(coverage)
    return samples


def _taught(
    main: Conversation,
    conv: Conversation,
    cuts: list[_Cut],
    strategy: str,
    score: Score,
    ready_after: float,
    coverage: Counter[str],
) -> list[Sample]:
    samples = []
    for cut in cuts:
        samples.append(_sample(main, conv, cut, strategy, score, ready_after))
        samples += _pair_samples(main, conv, cut, score, ready_after)
        coverage["tool_calls_supervised"] += cut.tool_calls
        coverage["assistant_turns_supervised"] += cut.assistant_turns
        coverage["preference_pairs"] += len(cut.pairs)
        lose(coverage, cut.rejected, "rejected", thinking=True)  # they hold calls
    return samples


def _single_turn(
    conv: Conversation,
    turns: list[Turn],
    options: CurateOptions,
    score: Score,
    ready_after: float,
    coverage: Counter[str],
) -> list[Sample]:
    """Strategy B: prompt -> final answer, for exchanges that made no tool call."""
    samples = []
    for group in exchanges(turns):
        prompt, answer = group[0], group[-1]
        if (
            score.tier in options.single_turn_tiers
            and not any(t.tool_calls for t in group)
            and prompt.role == "user"
            and answer.role == "assistant"
            and answer.text
        ):
            cut = _Cut([prompt, answer], to_messages([prompt, answer], options), 0, 1, [], [])
            if cut.messages:
                samples += _taught(conv, conv, [cut], "B", score, ready_after, coverage)
                lose(coverage, group[1:-1], "single_turn_rest", options.thinking)
                continue
        lose(coverage, group, f"tier_{score.tier}", options.thinking)
    return samples


def _subagent_samples(
    main: Conversation,
    sub: Conversation,
    options: CurateOptions,
    quality: QualityConfig | None,
    ready_after: float,
    coverage: Counter[str],
) -> list[Sample]:
    turns = list(sub.turns)
    prompt = str(sub.task["input"].get("prompt", "")) if sub.task else ""
    if turns and turns[0].role != "user" and prompt:
        # Some subagent files start with the assistant; the Task call holds the prompt.
        first = replace(turns[0], role="user", text=prompt, thinking="", tool_calls=[], results=[])
        turns.insert(0, replace(first, uuids=[sub.parent_tool_use_id], trigger=""))
    start = count_seen(sub, turns, coverage, options.thinking)
    score = score_conversation(sub, quality)
    if score.tier not in options.subagent_tiers:
        lose(coverage, turns[start:], f"subagent_tier_{score.tier}", options.thinking)
        return []
    return _taught(main, sub, _cuts(turns, options), "D", score, ready_after, coverage)
