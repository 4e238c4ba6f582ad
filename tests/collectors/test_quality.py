"""Quality scores: each dimension's formula, the overall weighting, tiers, per-sample grounding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from msgspec.structs import replace

from collectors.curate import curate
from collectors.quality import (
    QualityConfig,
    exchanges,
    score_conversation,
    score_window,
    tier_for,
)
from collectors.sessions import load_session
from collectors.transcript import Conversation, parse_file
from collectors.transcript_lines import ToolCall, ToolResult, Turn
from collectors.turn_windows import CurateOptions, windows

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "claude-sessions"


def conv(*turns: Turn, interrupts: int = 0) -> Conversation:
    return Conversation(
        session_id="s", path=Path("s.jsonl"), turns=list(turns), interrupts=interrupts
    )


def call(i: int, name: str = "Bash") -> ToolCall:
    return ToolCall(id=f"t{i}", name=name, input={})


def result(i: int, error: bool = False) -> ToolResult:
    return ToolResult(tool_use_id=f"t{i}", content="out", is_error=error)


def test_plain_qa_dimensions() -> None:
    score = score_conversation(
        conv(
            Turn("user", text="How do I fix this Python bug?"),
            Turn("assistant", text="Write a test, then refactor the function.", thinking="hmm"),
        )
    )
    assert score.dims == {
        "completion": 1.0,
        "depth": round(math.log(2) / math.log(21), 4),
        "domain": 0.625,  # python, bug, test, refactor, function: 5 distinct terms of 8 needed
        "tools": 0.0,
        "thinking": 1.0,
        "errors": 1.0,
    }
    expected = 0.25 + 0.15 * math.log(2) / math.log(21) + 0.15 * 0.625 + 0.10 + 0.20
    assert score.overall == pytest.approx(expected, abs=1e-4)
    assert score.tier == "B"


def test_tools_errors_interrupts_and_unanswered_exchange() -> None:
    calls = [call(i, name) for i, name in enumerate(["Bash", "Read", "Edit", "Bash"])]
    score = score_conversation(
        conv(
            Turn("user", text="first"),
            Turn("assistant", tool_calls=calls),
            Turn("tool", results=[result(0, True), result(1), result(2), result(3, True)]),
            Turn("assistant", text="done"),
            Turn("user", text="second"),
            Turn("assistant", tool_calls=[call(9)]),  # interrupted: no result, no final text
            interrupts=1,
        )
    )
    assert score.dims["completion"] == 0.4  # 1 of 2 answered, minus 0.1 per interrupt
    assert score.dims["tools"] == round(0.5 * 3 / 4 + 0.5 * 5 / 10, 4)
    assert score.dims["errors"] == 0.5
    assert score.dims["thinking"] == 0.0


def test_event_turn_starts_its_own_exchange() -> None:
    turns = [
        Turn("assistant", text="headless start"),
        Turn("user", text="q"),
        Turn("assistant", text="a"),
        Turn("assistant", text="task finished", trigger="task-notification"),
    ]
    assert [[t.text for t in g] for g in exchanges(turns)] == [
        ["headless start"],
        ["q", "a"],
        ["task finished"],
    ]


def test_custom_keywords_weights_and_tiers() -> None:
    talk = conv(
        Turn("user", text="the kubernetes pod and helm chart"), Turn("assistant", text="ok")
    )
    assert score_conversation(talk).dims["domain"] == 0.0
    config = QualityConfig(keywords=("kubernetes", "helm chart", "pod"), keyword_target=3)
    assert score_conversation(talk, config).dims["domain"] == 1.0
    only_domain = QualityConfig(
        keywords=("kubernetes",),
        keyword_target=1,
        weights={"completion": 0, "depth": 0, "domain": 1, "tools": 0, "thinking": 0, "errors": 0},
    )
    assert score_conversation(talk, only_domain).overall == 1.0
    assert [tier_for(x) for x in (0.7, 0.6999, 0.4, 0.3999)] == ["A", "B", "B", "C"]
    assert tier_for(0.5, QualityConfig(tier_a=0.5)) == "A"


def test_empty_conversation_is_tier_c() -> None:
    score = score_conversation(conv())
    assert score.overall == 0.2 and score.tier == "C"  # only "no errors" scores


@pytest.mark.parametrize(
    ("rel", "tier"),
    [
        ("spotter/258c7280-ae70-4798-800f-63464d01a85d.jsonl", "A"),
        ("fasthooks/sample_main_transcript.jsonl", "A"),
        ("spotter/tool_heavy.jsonl", "B"),
        ("spotter/short.jsonl", "C"),
    ],
)
def test_fixture_tiers(rel: str, tier: str) -> None:
    path = FIXTURES / rel
    if not path.is_file():
        pytest.skip(f"fixture {rel} not available")
    assert score_conversation(parse_file(path)).tier == tier


# --------------------------------------------------------------------------------------------
# Per-sample (window) scores

REJECTED = (
    "The user doesn't want to proceed with this tool use. The tool use was rejected (eg. if it "
    "was a file edit, the new_string was NOT written to the file)."
)


def _loop(prompt: str = "run the tests for the parser module") -> list[Turn]:
    """A grounded tool loop: call -> result -> an answer that uses the result."""
    return [
        Turn("user", text=prompt),
        Turn("assistant", text="Running pytest.", thinking="run them",
             tool_calls=[ToolCall(id="t1", name="Bash", input={"command": "pytest -q"})]),
        Turn("tool", results=[ToolResult(tool_use_id="t1", content="3 passed", is_error=False)]),
        Turn("assistant", text="All 3 parser tests pass; the regex change broke nothing."),
    ]  # fmt: skip


def test_window_tiers_separate_grounded_from_false_targets() -> None:
    grounded = score_window(_loop())
    claim = score_window([
        Turn("user", text="run the tests for the parser module"),
        Turn("assistant", text="Done! Here's the output: 3 passed.", thinking="sure"),
    ])  # fmt: skip
    rejected = score_window([
        Turn("user", text="clean the build of the parser module"),
        Turn("assistant", text="Removing it.", thinking="rm",
             tool_calls=[ToolCall(id="t1", name="Bash", input={"command": "rm -rf build"})]),
        Turn("tool", results=[ToolResult(tool_use_id="t1", content=REJECTED, is_error=True)]),
        Turn("assistant", text="Understood, I will leave the build directory alone."),
    ])  # fmt: skip
    context_free = score_window([
        Turn("user", text="please fix these"),
        Turn("assistant", text="The first needs a null check, the second an import.", thinking="?"),
    ])  # fmt: skip
    assert grounded.flags == {} and grounded.tier in ("A", "B")
    assert claim.flags == {"unexecuted_claim": 1}
    assert rejected.flags == {"rejected_call": 1}
    assert context_free.flags == {"context_free": 1}
    for bad in (claim, rejected, context_free):
        assert bad.overall == 0.0 and bad.tier == "C"  # one exchange, not grounded at all
        assert bad.overall < grounded.overall


def test_context_and_prior_turns_ground_a_short_prompt() -> None:
    fix = Turn("user", text="please fix these")
    answer = Turn("assistant", text="The first needs a null check, the second an import.")
    with_output = replace(fix, context="<bash-stdout>FAILED test_a - KeyError</bash-stdout>")
    assert score_window([with_output, answer]).flags == {}
    # Later in a window the earlier exchanges are its referent; only the first one is checked.
    assert score_window([*_loop(), fix, answer]).flags == {}


def test_one_rejected_call_in_a_long_loop_costs_its_share() -> None:
    turns = [Turn("user", text="refactor the parser module and run the tests")]
    for i in range(10):
        turns.append(Turn("assistant", tool_calls=[ToolCall(id=f"t{i}", name="Edit", input={})]))
        content = REJECTED if i == 3 else "ok"
        turns.append(Turn("tool", results=[
            ToolResult(tool_use_id=f"t{i}", content=content, is_error=i == 3)]))  # fmt: skip
    turns.append(Turn("assistant", text="Refactored; all tests pass."))
    score = score_window(turns)
    unflagged = score_window([t for t in turns if not (t.results and t.results[0]["is_error"])])
    assert score.flags == {"rejected_call": 1}
    # Grounded share 0.9, completion -0.1 and errors 0.9: about 0.84 of the clean loop's worth.
    assert 0.8 * unflagged.overall < score.overall < 0.9 * unflagged.overall


def _fixture(rel: str) -> Path:
    path = FIXTURES / rel
    if not path.is_file():
        pytest.skip(f"fixture {rel} not available")
    return path


def test_fixture_claim_without_call_scores_below_its_tool_loop() -> None:
    """fasthooks: "can you run a command ls -la" -> Bash -> result -> "Here's the output..."."""
    conv = load_session(_fixture("fasthooks/sample_main_transcript.jsonl"))
    loop = exchanges(conv.turns)[0]
    assert [t.role for t in loop] == ["user", "assistant", "tool", "assistant"]
    grounded = score_window(loop)
    stripped = score_window([loop[0], replace(loop[-1], tool_calls=[])])  # the old strategy B
    assert grounded.flags == {} and grounded.tier == "A"
    assert stripped.flags == {"unexecuted_claim": 1} and stripped.tier == "C"


def test_fixture_rejected_plan_is_tier_c() -> None:
    """spotter/short: both calls of the only exchange were rejected by the user."""
    conv = load_session(_fixture("spotter/short.jsonl"))
    score = score_window(exchanges(conv.turns)[0])
    assert score.flags == {"rejected_call": 2} and score.overall == 0.0 and score.tier == "C"


def test_fixture_windows_are_scored_on_their_own_turns() -> None:
    """258c: the long agentic exchange is cut into many windows, each scored on its own turns;
    the windows holding the rejected TaskOutput call score below the grounded tool loops, and the
    follow-up "did you push?" window (an answer with no call and nothing to point at) is tier C."""
    import statistics

    conv = load_session(_fixture("spotter/258c7280-ae70-4798-800f-63464d01a85d.jsonl"))
    assert score_conversation(conv).tier == "A"
    scores = [score_window(w) for w, _ in windows(conv.turns, CurateOptions())]
    assert len(scores) > 10
    *agentic, last = scores
    assert last.flags == {"context_free": 1, "unexecuted_claim": 1} and last.tier == "C"
    grounded = [x.overall for x in agentic if not x.flags]
    rejected = [x.overall for x in agentic if x.flags.get("rejected_call")]
    assert rejected and statistics.mean(rejected) < statistics.median(grounded)
    assert last.overall < min(grounded)
    samples = [s for s in curate(conv) if s.strategy == "A"]
    # Per-sample scores, not the session's A inherited by every window.
    assert len({round(s.score, 6) for s in samples}) > len(samples) // 2
    assert samples[-1].tier == "C" and samples[-1].score == last.overall
