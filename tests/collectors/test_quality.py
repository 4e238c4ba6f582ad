"""Session quality scores: each dimension's formula, the overall weighting, tiers, and fixtures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from collectors.quality import QualityConfig, exchanges, score_conversation, tier_for
from collectors.transcript import Conversation, parse_file
from collectors.transcript_lines import ToolCall, ToolResult, Turn

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
