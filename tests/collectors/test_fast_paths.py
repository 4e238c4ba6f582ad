"""Each fast path of session extraction gives what its plain definition gives.

Lines that do not fit the typed line shape read as the dict-based parser read them; reminders,
keyword hits, tool-call sizes and strategy A windows match the straightforward code they replace.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collectors.jsonl_lines import read_records
from collectors.quality import DEFAULT_KEYWORDS, keyword_pattern
from collectors.sessions import load_session
from collectors.transcript import parse_file
from collectors.transcript_lines import ToolCall, ToolResult, Turn, read_lines, strip_reminders
from collectors.turn_windows import CurateOptions, _finish, _raw_messages, windows
from sam_brain.dev.examples import write_example_sessions
from sam_brain.pipeline.validate import message_chars
from sam_brain.pipeline.windowing import estimate_tokens, tools_tokens
from sam_brain.protocols import Message

# --------------------------------------------------------------------------------------------
# Lines that do not fit the typed shape


def line(uuid: Any, parent: Any, kind: str, message: Any, **extra: Any) -> dict[str, Any]:
    return {
        "type": kind,
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": f"2026-01-01T10:00:{len(str(uuid)):02d}Z",
        "sessionId": "s-1",
        "message": message,
        **extra,
    }


def write(path: Path, *records: Any, raw: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + raw)
    return path


def test_misfit_fields_read_as_absent(tmp_path: Path) -> None:
    call = {"type": "tool_use", "id": "t1", "name": "Bash", "input": ["not", "a", "dict"]}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": 42}
    path = write(
        tmp_path / "s.jsonl",
        # A non-object item in a content list is ignored; the text next to it is kept.
        line(
            "u1",
            None,
            "user",
            {"role": "user", "content": ["stray", {"type": "text", "text": "hi"}]},
        ),
        # A numeric uuid reads as none: the turn keeps its place in the tree by its line number.
        line(7, "u1", "assistant", {"id": "m1", "content": [call]}),
        # Output that is neither text nor blocks is empty; a list toolUseResult names no agent.
        line("u3", 7, "user", {"role": "user", "content": [result]}, toolUseResult=["x"]),
        line("p1", "u3", "progress", None, data="not an object"),
        line("u4", "p1", "user", "a message that is a string"),
        line("a2", "p1", "assistant", {"id": "m2", "content": [{"type": "text", "text": 5}]}),
        line("a3", "p1", "assistant", {"id": "m3", "content": [{"type": "text", "text": "done"}]}),
    )
    conv = parse_file(path)
    assert [(t.role, t.text, t.uuids) for t in conv.turns] == [
        ("user", "hi", ["u1"]),
        ("assistant", "", [""]),
        ("tool", "", ["u3"]),
        ("assistant", "done", ["a3"]),
    ]
    assert conv.turns[1].tool_calls == [{"id": "t1", "name": "Bash", "input": {}}]
    assert conv.turns[2].results == [
        {"tool_use_id": "t1", "content": "", "is_error": False, "name": "Bash"}
    ]
    # The line under the numeric uuid names no parent it can have: it starts a second root.
    assert dict(conv.skipped) == {"type:progress": 1, "bad_message": 1, "empty_assistant": 1}


def test_agent_id_from_tool_use_result_and_lines_json_accepts(tmp_path: Path) -> None:
    task = {"type": "tool_use", "id": "t1", "name": "Task", "input": {"prompt": "go"}}
    result = {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}
    # NaN and a lone surrogate are valid for json but not for the fast decoders.
    odd = b'{"type":"system","uuid":"x1","parentUuid":"a1","n":NaN,"s":"\\ud800"}\n'
    path = write(
        tmp_path / "s.jsonl",
        line("u1", None, "user", {"role": "user", "content": "run it"}),
        line("a1", "u1", "assistant", {"id": "m1", "content": [task]}),
        raw=odd
        + json.dumps(
            line(
                "u2",
                "x1",
                "user",
                {"role": "user", "content": [result]},
                toolUseResult={"status": "completed", "agentId": "abc123"},
            )
        ).encode()
        + b"\n",
    )
    conv = parse_file(path)
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool"]
    assert conv.turns[2].results[0]["agent_id"] == "abc123"
    assert dict(conv.skipped) == {"type:system": 1}


def test_open_last_line_and_two_objects_on_one_line(tmp_path: Path) -> None:
    first = json.dumps({"type": "user", "n": 1})
    path = tmp_path / "s.jsonl"
    path.write_bytes(f"{first}\n{first}, {first}\n\n{first}".encode())
    # A complete object without its newline yet is read; `a, b` is not one object.
    skipped: Counter[str] = Counter()
    assert read_records(path, skipped) == [{"type": "user", "n": 1}] * 3
    assert dict(skipped) == {"salvaged_line": 1, "blank": 1}
    skipped = Counter()
    assert [line.type for line in read_lines(path, skipped)] == ["user"] * 3
    assert dict(skipped) == {"salvaged_line": 1, "blank": 1}


# --------------------------------------------------------------------------------------------
# Reminders and keywords

OLD_REMINDER = re.compile(r"\s*<system-reminder>.*?</system-reminder>\s*", re.DOTALL)


def strip_by_sub(text: str, skipped: Counter[str]) -> str:
    stripped, n = OLD_REMINDER.subn("\n", text)
    if n:
        skipped["system_reminder"] += n
        return stripped.strip("\n")
    return text


def test_reminders_are_stripped_as_a_substitution_would() -> None:
    text = "out\n \n<system-reminder>a\nb</system-reminder>\n\nmore\u00a0<system-reminder>c"
    skipped: Counter[str] = Counter()
    assert strip_reminders(text, skipped) == "out\nmore\u00a0<system-reminder>c"
    assert skipped == Counter(system_reminder=1)
    pieces = ["<system-reminder>", "</system-reminder>", " ", "\n", "\u2003", "a", "<system-"]
    rng = random.Random(7)
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        ours, plain = Counter[str](), Counter[str]()
        assert (strip_reminders(text, ours), ours) == (strip_by_sub(text, plain), plain), text


def test_keyword_prefix_tree_finds_what_the_alternation_finds() -> None:
    pattern = keyword_pattern(DEFAULT_KEYWORDS)
    assert pattern.pattern.startswith(r"\b(?:(?:a(?:pi|sync)|b(?:ranch|u(?:g|ild))")
    # "stack" before "stack trace": both can match at one place, so the plain alternation
    # (whose order decides) is kept.
    assert keyword_pattern(("stack", "stack trace")).pattern == r"\b(?:stack|stack\ trace)\b"
    rng = random.Random(3)
    alphabet = ["a", "b", "ab", " ", "-", "+", "é", "_", "1", "\n", "T"]
    for _ in range(1000):
        words = tuple(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4)))
            for _ in range(rng.randint(1, 6))
        )
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))).lower()
        plain = r"\b(?:" + "|".join(re.escape(w.lower()) for w in words) + r")\b"
        assert keyword_pattern(words).findall(text) == re.findall(plain, text), (words, text)


# --------------------------------------------------------------------------------------------
# Sizes and windows


@pytest.mark.parametrize(
    "call",
    [
        {"id": "t1", "type": "function", "function": {"name": "Bash", "arguments": '{"a": 1}'}},
        {"function": {"arguments": 'é"\\\x7f\n😀', "name": "ü"}, "type": "f", "id": ""},
        {"id": 1, "type": "function", "function": {"name": "x", "arguments": "{}"}},
        {"id": "t", "type": "function", "function": {"name": "x", "arguments": {"a": 1}}},
        {"id": "t", "type": "function", "function": {"name": "x"}, "extra": True},
    ],
)
def test_message_chars_count_tool_calls_as_json(call: dict[str, Any]) -> None:
    message: Message = {"role": "assistant", "content": "ok", "tool_calls": [call]}
    assert message_chars(message) == len("ok") + 8 + len(json.dumps(call))


def plain_windows(turns: list[Any], options: CurateOptions) -> list[list[Message]] | None:
    """Strategy A windows of whole exchanges, every try counting the whole window again.

    None when one exchange alone is over the budget (then `windows` cuts inside it).
    """
    groups: list[list[Any]] = []
    for turn in turns:
        if turn.role == "user":
            groups.append([])
        if groups:
            groups[-1].append(turn)
    out = []
    raw: list[Message] = []
    # The tools block of the whole conversation is budgeted beside every window.
    limit = options.max_tokens - tools_tokens(_raw_messages(turns, options), options.count)
    for group in groups:
        raw_group = _raw_messages(group, options)
        alone = sum(map(options.count, _finish(raw_group, options)))
        if alone > limit and len(raw_group) > 2:
            return None
        candidate = _finish(raw + raw_group, options)
        if raw and sum(map(options.count, candidate)) > limit:
            out.append(_finish(raw, options))
            raw = raw_group
        else:
            raw = raw + raw_group
    if raw:
        out.append(_finish(raw, options))
    return [m for m in out if m]


def test_windows_match_a_whole_window_estimate(tmp_path: Path) -> None:
    mains = write_example_sessions(tmp_path, n_sessions=6, seed=11)
    runs = [load_session(p).turns for p in mains]
    assert sum(len(turns) for turns in runs) > 60
    # Prompts left unanswered (an exchange with no assistant message) between answered ones.
    call: ToolCall = {"id": "t1", "name": "Bash", "input": {"command": "ls"}}
    result: ToolResult = {"tool_use_id": "t1", "content": "x" * 90, "is_error": False}
    runs.append(
        [
            Turn("user", text="q1" * 40),
            Turn("assistant", text="a1" * 40),
            Turn("user", text="q2" * 40),
            Turn("user", text="q3" * 40),
            Turn("assistant", tool_calls=[call]),
            Turn("tool", results=[result]),
            Turn("user", text="q4" * 40),
            Turn("assistant", text="a4" * 40),
        ]
    )
    compared = 0
    for system in ("", "You are SAM."):
        for budget in (*range(0, 200, 3), 400, 900, 2000, 4096):
            for turns in runs:
                # Budgets beside the run's tools block, which every window carries.
                block = tools_tokens(_raw_messages(turns, CurateOptions()), estimate_tokens)
                options = replace(CurateOptions(), max_tokens=budget + block, system_prompt=system)
                plain = plain_windows(turns, options)
                if plain is not None:
                    compared += 1
                    assert [m for _, m in windows(turns, options)] == plain, (budget, system)
    assert compared > 100  # of 7 runs x 2 prompts x 70 budgets; the rest cut inside exchanges
