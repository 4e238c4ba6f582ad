"""Transcript parsing and threading, on real Claude Code fixtures and small hand-made files."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from collectors.jsonl_lines import read_records
from collectors.transcript import Conversation, parse_file

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "claude-sessions"


def fixture(rel: str) -> Path:
    path = FIXTURES / rel
    if not path.is_file():
        pytest.skip(f"fixture {rel} not available")
    return path


def calls(conv: Conversation) -> list[dict[str, Any]]:
    return [dict(c) for t in conv.turns for c in t.tool_calls]


def results(conv: Conversation) -> list[dict[str, Any]]:
    return [dict(r) for t in conv.turns for r in t.results]


# --------------------------------------------------------------------------------------------
# Hand-made transcripts


def user(uuid: str, parent: str | None, text: str, ts: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "user",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": ts,
        "sessionId": "s-1",
        "cwd": "/repo",
        "gitBranch": "main",
        "version": "2.1.39",
        "message": {"role": "user", "content": text},
        **extra,
    }


def assistant(
    uuid: str, parent: str | None, msg: str, block: dict[str, Any], ts: str
) -> dict[str, Any]:
    return {
        "type": "assistant",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": ts,
        "sessionId": "s-1",
        "message": {"id": msg, "role": "assistant", "content": [block]},
    }


def tool_use(tid: str, name: str = "Bash") -> dict[str, Any]:
    return {"type": "tool_use", "id": tid, "name": name, "input": {"command": f"run {tid}"}}


def tool_result(uuid: str, parent: str, tid: str, ts: str, error: bool = False) -> dict[str, Any]:
    block = {"type": "tool_result", "tool_use_id": tid, "content": f"out {tid}", "is_error": error}
    return {
        "type": "user",
        "uuid": uuid,
        "parentUuid": parent,
        "timestamp": ts,
        "sessionId": "s-1",
        "message": {"role": "user", "content": [block]},
    }


def text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def write(path: Path, records: list[dict[str, Any]], tail: bytes = b"") -> Path:
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in records) + tail)
    return path


def test_rewind_branch_keeps_path_to_newest_leaf(tmp_path: Path) -> None:
    path = write(
        tmp_path / "s.jsonl",
        [
            user("u1", None, "first question", "2026-01-01T10:00:00Z"),
            assistant("a1", "u1", "m1", text("first answer"), "2026-01-01T10:00:05Z"),
            user("u2", "a1", "abandoned follow-up", "2026-01-01T10:01:00Z"),
            assistant("a2", "u2", "m2", text("abandoned answer"), "2026-01-01T10:01:05Z"),
            # The user rewound to a1 and asked something else, later.
            user("u3", "a1", "edited follow-up", "2026-01-01T10:05:00Z"),
            assistant("a3", "u3", "m3", text("kept answer"), "2026-01-01T10:05:05Z"),
        ],
    )
    conv = parse_file(path)
    assert [t.text for t in conv.turns] == [
        "first question",
        "first answer",
        "edited follow-up",
        "kept answer",
    ]
    assert conv.skipped["abandoned_branch"] == 2


def test_parallel_tool_calls_are_not_a_rewind(tmp_path: Path) -> None:
    # One API message, two tool_use lines; the result of #1 hangs off line #1 (a side fork).
    path = write(
        tmp_path / "s.jsonl",
        [
            user("u1", None, "check both", "2026-01-01T10:00:00Z"),
            assistant("a1", "u1", "m1", tool_use("t1"), "2026-01-01T10:00:01Z"),
            assistant("a2", "a1", "m1", tool_use("t2", "Glob"), "2026-01-01T10:00:02Z"),
            tool_result("r1", "a1", "t1", "2026-01-01T10:00:03Z"),
            tool_result("r2", "a2", "t2", "2026-01-01T10:00:04Z", error=True),
            assistant("a3", "r2", "m2", text("both done"), "2026-01-01T10:00:05Z"),
        ],
    )
    conv = parse_file(path)
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool", "assistant"]
    assert [c["id"] for c in conv.turns[1].tool_calls] == ["t1", "t2"]
    assert [(r["tool_use_id"], r["name"], r["is_error"]) for r in conv.turns[2].results] == [
        ("t1", "Bash", False),
        ("t2", "Glob", True),
    ]
    assert conv.turns[1].uuids == ["a1", "a2"]
    assert "abandoned_branch" not in conv.skipped


def test_dropped_lines_relink_and_dangling_parent_is_a_root(tmp_path: Path) -> None:
    progress = {
        "type": "progress",
        "uuid": "p1",
        "parentUuid": None,
        "data": {"type": "hook_progress"},
    }
    meta = user(
        "m1", "a1", "<system-reminder>hook context</system-reminder>", "2026-01-01T10:00:06Z"
    )
    path = write(
        tmp_path / "s.jsonl",
        [
            progress,
            user("u1", "p1", "hello", "2026-01-01T10:00:00Z"),
            assistant("a1", "u1", "m1", text("hi"), "2026-01-01T10:00:05Z"),
            {**meta, "isMeta": True},
            user("u2", "m1", "[Request interrupted by user]", "2026-01-01T10:00:07Z"),
            user("u3", "u2", "<command-name>/model</command-name>", "2026-01-01T10:00:08Z"),
            user("u4", "u3", "next question", "2026-01-01T10:00:09Z"),
            assistant(
                "a4",
                "u4",
                "m4",
                {"type": "thinking", "thinking": "", "signature": "x"},
                "2026-01-01T10:00:10Z",
            ),
            assistant("a5", "a4", "m4", text("next answer"), "2026-01-01T10:00:11Z"),
            # Written after a parent that never reached the disk (CC#58554): kept, as a root.
            user("u6", "gone", "orphan question", "2026-01-01T10:01:00Z"),
            assistant("a6", "u6", "m6", text("orphan answer"), "2026-01-01T10:01:01Z"),
        ],
    )
    conv = parse_file(path)
    assert [t.text for t in conv.turns] == [
        "hello",
        "hi",
        "next question",
        "next answer",
        "orphan question",
        "orphan answer",
    ]
    assert conv.turns[3].thinking == ""
    assert conv.interrupts == 1
    assert conv.skipped["meta"] == 1
    assert conv.skipped["command"] == 1
    assert conv.skipped["empty_thinking"] == 1
    assert conv.skipped["dangling_parent"] == 1
    assert conv.skipped["type:progress"] == 1
    assert (conv.session_id, conv.cwd, conv.git_branch) == ("s-1", "/repo", "main")
    assert (conv.started, conv.ended) == ("2026-01-01T10:00:00Z", "2026-01-01T10:01:01Z")


def test_bad_lines_are_counted_not_fatal(tmp_path: Path) -> None:
    good = [
        user("u1", None, "question", "2026-01-01T10:00:00Z"),
        assistant("a1", "u1", "m1", text("answer"), "2026-01-01T10:00:05Z"),
    ]
    torn_head = b'{"type":"pr-link","sessionId":"s-1","prNu'
    torn = torn_head + json.dumps(user("u2", "a1", "salvaged", "2026-01-01T10:00:06Z")).encode()
    path = tmp_path / "s.jsonl"
    path.write_bytes(
        json.dumps(good[0]).encode()
        + b"\n\x00\x00\x00\x00\n"  # NUL run from an interrupted append
        + b"\xff\xfe not utf-8\n"
        + b"[1]\n"
        + b"{not json\n"
        + b"\x00\x00\x00"  # NULs in front of a complete line
        + json.dumps(good[1]).encode()
        + b"\n"
        + torn
        + b"\n"
        + b'{"type":"user","message":{"role":"us'  # still being written: no newline yet
    )
    skipped: Counter[str] = Counter()
    assert len(read_records(path, skipped)) == 3
    assert dict(skipped) == {
        "nul_line": 1,
        "nul_bytes": 1,
        "undecodable": 1,
        "not_object": 1,
        "bad_json": 1,
        "salvaged_line": 1,
        "truncated_last_line": 1,
    }
    conv = parse_file(path)
    assert [t.text for t in conv.turns] == ["question", "answer", "salvaged"]


def test_images_counted_and_thinking_kept(tmp_path: Path) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "AA=="},
    }
    prompt = user("u1", None, "", "2026-01-01T10:00:00Z")
    prompt["message"]["content"] = [text("what is in this screenshot?"), image]
    path = write(
        tmp_path / "s.jsonl",
        [
            prompt,
            assistant(
                "a1",
                "u1",
                "m1",
                {"type": "thinking", "thinking": "look closely"},
                "2026-01-01T10:00:01Z",
            ),
            assistant("a2", "a1", "m1", text("a stack trace"), "2026-01-01T10:00:02Z"),
        ],
    )
    conv = parse_file(path)
    assert conv.skipped["image"] == 1
    assert [(t.role, t.text, t.thinking) for t in conv.turns] == [
        ("user", "what is in this screenshot?", ""),
        ("assistant", "a stack trace", "look closely"),
    ]


# --------------------------------------------------------------------------------------------
# Real fixtures


def test_short_keeps_one_prompt_and_its_parallel_calls() -> None:
    conv = parse_file(fixture("spotter/short.jsonl"))
    assert [t.role for t in conv.turns] == ["user", "assistant", "tool"]
    assert conv.turns[0].text == "mix phx.server doesnt seem to start"
    answer = conv.turns[1]
    assert [c["name"] for c in answer.tool_calls] == ["Bash", "Glob"]
    assert len(answer.thinking) > 100
    assert len(answer.uuids) == 4  # text, thinking, two tool_use lines ("\n\n" text dropped)
    assert [r["name"] for r in conv.turns[2].results] == ["Bash", "Glob"]
    assert all(r["is_error"] for r in conv.turns[2].results)
    assert conv.interrupts == 1
    assert conv.skipped["type:progress"] == 3
    assert conv.skipped["type:system"] == 2  # the /model local_command lines


def test_tool_heavy_pairs_every_call_with_its_result() -> None:
    conv = parse_file(fixture("spotter/tool_heavy.jsonl"))
    assert [t.text for t in conv.turns if t.role == "user"] == [
        "start phoenix in background",
        "scrolling back in xterm.js still does not work (maybe because outer web catches it)? "
        "websearch xterm.js tmux interactions",
    ]
    by_id = {c["id"]: c["name"] for c in calls(conv)}
    assert len(by_id) == 6
    assert {r["tool_use_id"]: r["name"] for r in results(conv)} == by_id
    assert "unmatched_tool_result" not in conv.skipped
    assert "unanswered_tool_call" not in conv.skipped
    assert conv.interrupts == 2
    # The parallel WebSearch + Glob fork: one assistant turn, then both results in call order.
    fork = next(t for t in conv.turns if [c["name"] for c in t.tool_calls] == ["WebSearch", "Glob"])
    after = conv.turns[conv.turns.index(fork) + 1]
    assert [r["name"] for r in after.results] == ["WebSearch", "Glob"]


def test_fasthooks_compaction_summary_dropped() -> None:
    conv = parse_file(fixture("fasthooks/sample_main_transcript.jsonl"))
    prompts = [t.text for t in conv.turns if t.role == "user"]
    assert len(prompts) == 5
    assert prompts[0] == "can you run a command ls -la"
    assert conv.skipped["compact_summary"] == 1
    assert not any("being continued from a previous conversation" in t.text for t in conv.turns)
    assert len(calls(conv)) == len(results(conv)) == 10
    assert sum(1 for t in conv.turns if t.thinking) == 12
    assert conv.turns[-1].text.startswith("Great! Here's what I did across multiple tool calls")


def test_spotter_auto_compaction_is_stitched() -> None:
    conv = parse_file(fixture("spotter/258c7280-ae70-4798-800f-63464d01a85d.jsonl"))
    at = {u: i for i, t in enumerate(conv.turns) for u in t.uuids}
    # Last line before compaction (a tool result), then the first kept line after it.
    assert (
        at["06c57af5-bab9-4a76-9460-59ac0e274ff0"] == at["7c642069-996d-4ae0-a61c-554b35d36fb6"] + 1
    )
    assert conv.skipped["compact_summary"] == 1
    assert [t.text for t in conv.turns if t.role == "user"] == [
        "Implement spotter-gqc",
        "did you push?",
    ]
    assert len(calls(conv)) == len(results(conv)) == 186
    assert conv.skipped["type:progress"] == 1328
    assert conv.skipped["agent_progress"] == 5
    assert conv.skipped["task_notification"] == 2
    assert [t.trigger for t in conv.turns if t.trigger] == ["task-notification"] * 2
    assert "abandoned_branch" not in conv.skipped
    assert (conv.version, conv.git_branch) == ("2.1.39", "spotter-gqc")


def test_viewer_inline_sidechains_are_split_off() -> None:
    conv = parse_file(fixture("claude-code-viewer/fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"))
    # The session starts with `/orchestrator`: the command is the first prompt (context only).
    assert [t.text for t in conv.turns if t.role == "user"] == [
        "",
        "Thanks! Please update CLAUDE.md for current changes",
    ]
    assert "<command-name>/orchestrator</command-name>" in conv.turns[0].context
    assert len(conv.subagents) == 5
    assert [len(s.turns) for s in conv.subagents] == [18, 68, 80, 50, 106]
    main_uuids = {u for t in conv.turns for u in t.uuids}
    side_uuids = {u for s in conv.subagents for t in s.turns for u in t.uuids}
    assert not main_uuids & side_uuids
    assert len(main_uuids) + len(side_uuids) <= 438
    assert [c["name"] for c in calls(conv)].count("Task") == 5
    assert len(results(conv)) == 11


def test_synthetic_edge_cases_are_counted() -> None:
    conv = parse_file(fixture("synthetic/edge_cases.jsonl"))
    assert conv.skipped["not_object"] == 3  # "massive error", 42, [1]
    assert conv.skipped["bad_message"] == 1  # "message": "error"
    assert conv.skipped["duplicate_uuid"] == 1
    assert conv.skipped["type:missing"] == 1  # {"silly": "this"}
    assert conv.skipped["command"] == 2  # `test-command` (custom) is context, not dropped
    assert conv.skipped["unanswered_tool_call"] == 2
    assert [t.role for t in conv.turns].count("user") == 3
    assert [r["name"] for r in results(conv)] == ["FailingTool"]
