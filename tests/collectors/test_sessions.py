"""The sessions collector: subagent linking, cursors, re-extraction, quiet period, archive, samples."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from collectors.curate import curate
from collectors.sessions import SessionCollector, load_session
from collectors.turn_windows import CurateOptions, truncate, windows
from sam_brain.pipeline.validate import check_sample
from sam_brain.pipeline.windowing import estimate_tokens as estimate_message
from sam_brain.pipeline.windowing import tools_tokens
from sam_brain.protocols import Collector, CollectResult, stable_id

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "claude-sessions"
SPOTTER = "spotter/258c7280-ae70-4798-800f-63464d01a85d"
B_ONLY = CurateOptions(multi_turn_tiers=(), single_turn_tiers=("A", "B", "C"))


def fixture(rel: str) -> Path:
    path = FIXTURES / rel
    if not path.exists():
        pytest.skip(f"fixture {rel} not available")
    return path


class Cursors:
    """The state store's cursor table, in memory."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})

    def get_cursor(self, key: str) -> str | None:
        return self.values.get(key)


class Session:
    """Writes a small but realistic transcript: prompt -> thinking + Bash call -> result -> answer."""

    def __init__(self, path: Path, session_id: str = "sess-1", agent_id: str = "") -> None:
        self.path, self.session_id, self.agent_id = path, session_id, agent_id
        self.records: list[dict[str, Any]] = []
        self.n = 0
        path.parent.mkdir(parents=True, exist_ok=True)

    def _line(self, kind: str, message: dict[str, Any], **extra: Any) -> dict[str, Any]:
        self.n += 1
        prefix = self.agent_id or self.session_id
        rec = {
            "type": kind,
            "uuid": f"{prefix}-{self.n:03d}",
            "parentUuid": self.records[-1]["uuid"] if self.records else None,
            "timestamp": f"2026-01-01T10:{self.n:02d}:00Z",
            "sessionId": self.session_id,
            "cwd": "/repo",
            "gitBranch": "main",
            "version": "2.1.39",
            "message": message,
            **extra,
        }
        if self.agent_id:
            rec.update(isSidechain=True, agentId=self.agent_id)
        self.records.append(rec)
        return rec

    def user(self, text: str) -> None:
        self._line("user", {"role": "user", "content": text})

    def assistant(self, *blocks: dict[str, Any]) -> None:
        msg = f"msg-{self.n}"
        for block in blocks:
            self._line("assistant", {"id": msg, "role": "assistant", "content": [block]})

    def result(self, tid: str, content: str, **extra: Any) -> None:
        block = {"type": "tool_result", "tool_use_id": tid, "content": content}
        self._line("user", {"role": "user", "content": [block]}, **extra)

    def exchange(self, i: int, output: str = "1 passed") -> None:
        self.user(f"Question {i}: fix the failing pytest test in the parser module")
        self.assistant(
            {"type": "thinking", "thinking": f"plan {i}: run the tests first"},
            {"type": "tool_use", "id": f"t{i}", "name": "Bash", "input": {"command": "pytest -q"}},
        )
        self.result(f"t{i}", output)
        self.assistant(
            {
                "type": "text",
                "text": f"Answer {i}: the function had a bug; the test and build pass.",
            }
        )

    def save(self) -> Path:
        self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))
        return self.path


def by_strategy(result: CollectResult) -> Counter[str]:
    """Supervised samples by strategy (preference pairs are counted apart)."""
    return Counter(s.strategy for s in result.samples if s.kind == "sft")


# --------------------------------------------------------------------------------------------
# Subagents


def test_nested_subagent_linked_and_compaction_agent_dropped() -> None:
    conv = load_session(fixture(f"{SPOTTER}.jsonl"))
    assert [s.agent_id for s in conv.subagents] == ["a881341"]
    sub = conv.subagents[0]
    assert sub.parent_tool_use_id == "toolu_01VmaERAwhb19LGUwu9GenaK"
    assert sub.task is not None and sub.task["name"] == "Task"
    assert sub.turns[0].text.startswith("What is the output contract for Claude Code hooks")
    assert [c["name"] for t in sub.turns for c in t.tool_calls] == ["WebFetch", "WebFetch"]
    assert conv.skipped["acompact_agent"] == 1
    # The 5 agent_progress copies in the main file are not read as conversation turns.
    assert conv.skipped["agent_progress"] == 5
    main_uuids = {u for t in conv.turns for u in t.uuids}
    assert not main_uuids & {u for t in sub.turns for u in t.uuids}
    assert "WebFetch" not in {c["name"] for t in conv.turns for c in t.tool_calls}


def test_inline_sidechains_linked_by_prompt() -> None:
    conv = load_session(fixture("claude-code-viewer/fe5e1c67-53e7-4862-81ae-d0e013e3270b.jsonl"))
    tasks = {c["id"] for t in conv.turns for c in t.tool_calls if c["name"] == "Task"}
    assert len(conv.subagents) == 5
    assert {s.parent_tool_use_id for s in conv.subagents} == tasks
    assert all(
        s.task and s.turns[0].text == s.task["input"]["prompt"].strip() for s in conv.subagents
    )
    assert "unlinked_agent" not in conv.skipped


def test_warmup_sidechain_dropped() -> None:
    conv = load_session(fixture("fasthooks/sample_agent_sidechain.jsonl"))
    assert conv.turns == [] and conv.subagents == []
    assert conv.skipped["warmup_agent"] == 1


def test_flat_subagent_linked_by_agent_id_and_warmup_dropped(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "-repo"
    main = Session(project / "sess-1.jsonl")
    main.user("Review the parser module")
    main.assistant(
        {"type": "tool_use", "id": "task-1", "name": "Task", "input": {"prompt": "look"}}
    )
    main.result(
        "task-1", "found a bug", toolUseResult={"agentId": "ea02459f", "status": "completed"}
    )
    main.assistant({"type": "text", "text": "The subagent found a bug."})
    main.save()
    agent = Session(project / "agent-ea02459f.jsonl", agent_id="ea02459f")
    agent.user("look")
    agent.assistant({"type": "text", "text": "found a bug"})
    agent.save()
    warm = Session(project / "agent-1674bc8c.jsonl", agent_id="1674bc8c")
    warm.user("Warmup")
    warm.assistant({"type": "text", "text": "Ready."})
    warm.save()
    other = Session(project / "agent-00000000.jsonl", session_id="another", agent_id="00000000")
    other.user("not ours")
    other.save()
    conv = load_session(main.path)
    assert [(s.agent_id, s.parent_tool_use_id) for s in conv.subagents] == [("ea02459f", "task-1")]
    assert conv.skipped["warmup_agent"] == 1


# --------------------------------------------------------------------------------------------
# The collector


def test_collector_over_fixtures_then_unchanged(tmp_path: Path) -> None:
    root = fixture("")
    collector = SessionCollector([root], archive_dir=tmp_path / "archive")
    assert isinstance(collector, Collector)
    first = collector.collect(Cursors())
    # 258c's one long exchange is cut into 44 windows (each beside its tools block); no B: every
    # tier A session gives A; slash-command sessions give windows too (their command is the prompt).
    assert by_strategy(first) == {"A": 59, "D": 41}
    assert [s.meta["rejected_call"] for s in first.samples if s.kind == "preference"] == [
        "toolu_011NXYeWWxrZPLNNT8pFAZPi"
    ]
    mains = {s.source_key for s in first.samples}
    assert len(first.replace_keys) == 8  # every main transcript, sample or not
    assert mains <= first.replace_keys
    assert len(first.cursors) == 10  # 8 mains + 2 nested subagent files
    assert first.skipped["warmup_agent"] == 1 and first.skipped["acompact_agent"] == 1
    # Every sample is a well-formed chat (starts with user, ends with assistant, no empty turns).
    assert [check_sample(s, max_tokens=10**9, min_chars=1)[1] for s in first.samples] == [
        None
    ] * 101
    d = next(s for s in first.samples if s.strategy == "D" and "a881341" in s.meta["path"])
    assert d.group == "258c7280-ae70-4798-800f-63464d01a85d"
    assert d.source_key == str(root / f"{SPOTTER}.jsonl")
    assert (tmp_path / "archive" / f"{SPOTTER}/subagents/agent-a881341.jsonl.gz").is_file()
    again = collector.collect(Cursors(first.cursors))
    assert again.samples == [] and again.replace_keys == set()
    assert again.skipped["unchanged"] == 8


def test_growth_reextracts_with_replace_keys_and_stable_ids(tmp_path: Path) -> None:
    session = Session(tmp_path / "proj" / "sess-1.jsonl")
    session.exchange(1)
    session.exchange(2, output="x" * 5000)
    session.save()
    collector = SessionCollector([tmp_path], tool_output_chars=100)
    first = collector.collect(Cursors())
    assert by_strategy(first) == {"A": 1}  # tier A: no B pair repeats what A teaches
    assert first.replace_keys == {str(session.path)}
    ids = {s.id for s in first.samples}
    assert stable_id("sessions", "sess-1", "A", "sess-1-001") in ids

    unchanged = collector.collect(Cursors(first.cursors))
    assert unchanged.samples == [] and unchanged.skipped["unchanged"] == 1

    session.exchange(3)
    session.save()
    grown = collector.collect(Cursors(first.cursors))
    assert grown.replace_keys == {str(session.path)}
    assert by_strategy(grown) == {"A": 1}
    assert ids == {s.id for s in grown.samples}  # the one window grew in place
    multi = next(s for s in grown.samples if s.strategy == "A")
    assert [m["role"] for m in multi.messages].count("user") == 3
    tool_msgs = [m for m in multi.messages if m["role"] == "tool"]
    assert len(tool_msgs[1]["content"]) < 200 and "4900 chars truncated" in tool_msgs[1]["content"]
    cursor = json.loads(grown.cursors[f"sessions:{session.path}"])
    assert cursor["size"] == session.path.stat().st_size


def test_replaced_file_same_size_is_reextracted(tmp_path: Path) -> None:
    session = Session(tmp_path / "sess-1.jsonl")
    session.exchange(1)
    session.save()
    collector = SessionCollector([tmp_path])
    first = collector.collect(Cursors())
    copy = tmp_path / "copy.tmp"
    copy.write_bytes(session.path.read_bytes())
    os.replace(copy, session.path)  # same bytes, new inode
    again = collector.collect(Cursors(first.cursors))
    assert again.replace_keys == {str(session.path)}
    assert {s.id for s in again.samples} == {s.id for s in first.samples}


def test_quiet_period_sets_ready_after(tmp_path: Path) -> None:
    session = Session(tmp_path / "sess-1.jsonl")
    session.exchange(1)
    session.save()
    os.utime(session.path, (1_700_000_000, 1_700_000_000))
    result = SessionCollector([tmp_path], quiet_minutes=15).collect(Cursors())
    assert result.samples
    assert {s.ready_after for s in result.samples} == {1_700_000_000 + 15 * 60}


def test_changed_subagent_reextracts_parent_and_archive_follows(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    main = Session(projects / "-repo" / "sess-1.jsonl")
    main.exchange(1)
    main.user("Delegate: find the config loader")
    main.assistant(
        {"type": "tool_use", "id": "task-1", "name": "Agent", "input": {"prompt": "find it"}}
    )
    main.result("task-1", "in config.py", toolUseResult={"agentId": "a4ca7529859c158c2"})
    main.assistant({"type": "text", "text": "The config loader is in config.py; the test passes."})
    main.save()
    agent = Session(
        projects / "-repo" / "sess-1" / "subagents" / "agent-a4ca7529859c158c2.jsonl",
        agent_id="a4ca7529859c158c2",
    )
    agent.exchange(1)
    agent.save()
    archive = tmp_path / "archive"
    collector = SessionCollector([projects], archive_dir=archive)
    first = collector.collect(Cursors())
    assert by_strategy(first)["D"] == 1
    archived = archive / "-repo" / "sess-1" / "subagents" / "agent-a4ca7529859c158c2.jsonl.gz"
    assert gzip.decompress(archived.read_bytes()) == agent.path.read_bytes()

    agent.exchange(2)
    agent.save()
    again = collector.collect(Cursors(first.cursors), paths=[agent.path])
    assert again.replace_keys == {str(main.path)}
    sub_sample = next(s for s in again.samples if s.strategy == "D")
    assert sub_sample.group == "sess-1" and sub_sample.source_key == str(main.path)
    assert sub_sample.meta["parent_tool_use_id"] == "task-1"
    assert [m["role"] for m in sub_sample.messages].count("user") == 2
    assert gzip.decompress(archived.read_bytes()) == agent.path.read_bytes()
    assert (
        gzip.decompress((archive / "-repo" / "sess-1.jsonl.gz").read_bytes())
        == main.path.read_bytes()
    )
    assert not [p for p in archive.rglob("*") if p.name.endswith(".tmp")]


def test_ingest_file_of_a_subagent_means_its_parent(tmp_path: Path) -> None:
    nested = fixture(f"{SPOTTER}/subagents/agent-a881341.jsonl")
    result = SessionCollector([]).ingest_file(nested)
    assert result.replace_keys == {str(fixture(f"{SPOTTER}.jsonl"))}
    assert by_strategy(result) == {"A": 45, "D": 1}


# --------------------------------------------------------------------------------------------
# Sample format


def test_samples_use_the_chat_format(tmp_path: Path) -> None:
    session = Session(tmp_path / "sess-1.jsonl")
    session.exchange(1)
    session.save()
    samples = curate(load_session(session.path))
    multi = next(s for s in samples if s.strategy == "A")
    assert [m["role"] for m in multi.messages] == ["user", "assistant", "tool", "assistant"]
    call = multi.messages[1]
    assert call["content"] == "<think>\nplan 1: run the tests first\n</think>"
    assert call["tool_calls"] == [
        {
            "id": "t1",
            "type": "function",
            "function": {"name": "Bash", "arguments": '{"command": "pytest -q"}'},
        }
    ]
    assert multi.messages[2] == {"role": "tool", "tool_call_id": "t1", "content": "1 passed"}
    assert (multi.tier, multi.group, multi.source, multi.source_key) == (
        "A",
        "sess-1",
        "sessions",
        str(session.path),
    )
    assert set(multi.scores) == {"completion", "depth", "domain", "tools", "thinking", "errors"}
    assert multi.meta["uuids"][0] == "sess-1-001" and multi.meta["git_branch"] == "main"
    # The exchange made a tool call: no single-turn pair may claim its answer without it.
    assert not [s for s in samples if s.strategy == "B"]
    assert not [s for s in curate(load_session(session.path), B_ONLY) if s.strategy == "B"]
    no_think = curate(load_session(session.path), CurateOptions(thinking=False))
    assert all("<think>" not in str(m["content"]) for s in no_think for m in s.messages)


# --------------------------------------------------------------------------------------------
# Strategy A windows


def users(messages: list[Any]) -> int:
    return sum(m["role"] == "user" for m in messages)


def taught(messages: list[Any]) -> list[str]:
    """A key per supervised assistant message: its tool call ids, or its text."""
    return [
        ",".join(c["id"] for c in m.get("tool_calls") or []) or m["content"]
        for m in messages
        if m["role"] == "assistant" and m.get("weight", 1) != 0
    ]


def tokens(messages: list[Any]) -> int:
    return sum(map(estimate_message, messages))


def test_long_session_is_windowed_and_a_long_exchange_cut_between_steps(tmp_path: Path) -> None:
    # Estimated tokens per exchange: 1451, 1451, 1451, 4117 and 6784 (both over 4096), 784.
    session = Session(tmp_path / "sess-1.jsonl")
    for i, size in enumerate([4000, 4000, 4000, 12000, 20000, 2000], 1):
        session.exchange(i, output="x" * size)
    session.save()
    conv = load_session(session.path)
    options = CurateOptions(tool_output_chars=10**6)  # default budget: 4096
    multi = [s for s in curate(conv, options) if s.strategy == "A"]
    shapes = [
        [m["role"][0] + ("-" if m.get("weight") == 0 else "") for m in s.messages] for s in multi
    ]
    assert shapes == [
        ["u", "a", "t", "a", "u", "a", "t", "a"],
        ["u", "a", "t", "a"],
        ["u", "a"],  # exchange 4, cut: its call (the result is the next window's context)
        ["u", "a-", "t", "a"],  # its prompt again, the call and its 12000-char result (cut
        ["u", "a"],  # to fit the context share, half the budget) as context, the answer
        ["u", "a-", "t", "a"],  # exchange 5 alike
        ["u", "a", "t", "a"],
    ]
    assert multi[3].messages[0] == multi[2].messages[0]  # nothing elided: no note
    cut = multi[3].messages[2]["content"]
    assert len(cut) < 6000 and "chars cut ...]" in cut and cut.startswith("x" * 1000)
    # Every assistant turn (12) is taught in exactly one window, and every window fits.
    keys = [k for s in multi for k in taught(s.messages)]
    assert len(keys) == len(set(keys)) == 12
    assert sum(s.meta["supervised"]["assistant_turns"] for s in multi) == 12
    assert all(tokens(s.messages) <= 4096 for s in multi)
    assert [check_sample(s, max_tokens=4096, min_chars=1)[1] for s in multi] == [None] * 7
    # Windows inside an exchange are named by their first taught turn (5 lines an exchange).
    anchors = ["sess-1-001", "sess-1-011", "sess-1-016", "sess-1-020", "sess-1-021", "sess-1-025"]
    assert [s.id for s in multi[:6]] == [stable_id("sessions", "sess-1", "A", a) for a in anchors]
    # The budget is inclusive (messages plus the conversation's tools block): the first window's
    # size still holds it, one token less splits it.
    block = tools_tokens([m for _, ms in windows(conv.turns, options) for m in ms])
    first = tokens(multi[0].messages) + block
    exact = windows(conv.turns, replace(options, max_tokens=first))
    assert [users(m) for _, m in exact][:2] == [2, 1]
    tight = windows(conv.turns, replace(options, max_tokens=first - 1))
    assert [users(m) for _, m in tight][:3] == [1, 1, 1]

    session.exchange(7)
    session.save()
    grown = [s for s in curate(load_session(session.path), options) if s.strategy == "A"]
    assert [s.id for s in grown] == [s.id for s in multi]  # the last window grew in place
    assert users(grown[-1].messages) == 2


def test_collector_passes_max_tokens_to_windows(tmp_path: Path) -> None:
    session = Session(tmp_path / "sess-1.jsonl")
    for i in range(1, 5):
        session.exchange(i)  # 126 estimated tokens each
    session.save()
    whole = SessionCollector([tmp_path]).collect(Cursors())
    assert by_strategy(whole) == {"A": 1}
    block = tools_tokens(whole.samples[0].messages)  # the rendered tools block is budgeted too
    small = SessionCollector([tmp_path], max_tokens=260 + block).collect(Cursors())
    assert by_strategy(small) == {"A": 2}
    assert all(tokens(s.messages) + block <= 260 + block for s in small.samples)


def test_spotter_session_is_taught_whole_within_the_budget() -> None:
    conv = load_session(fixture(f"{SPOTTER}.jsonl"))
    coverage: Counter[str] = Counter()
    multi = [s for s in curate(conv, coverage=coverage) if s.strategy == "A" and s.kind == "sft"]
    # 2 prompts: the first starts 338 messages of agent work (~70k tokens), cut into 44 windows.
    assert len(multi) == 45 and users(multi[-1].messages) == 1
    # Each window fits, but one whose single step (a 22k-char Write) is longer than the budget.
    over = [len(taught(s.messages)) for s in multi if tokens(s.messages) > 4096]
    assert over == [1]
    first_prompt = multi[0].messages[0]["content"]
    assert all(s.messages[0]["content"].startswith(first_prompt) for s in multi[:44])
    assert len({s.id for s in multi}) == 45
    assert {s.group for s in multi} == {"258c7280-ae70-4798-800f-63464d01a85d"}
    keys = [k for s in multi for k in taught(s.messages)]
    assert len(keys) == len(set(keys))  # nothing taught twice
    # Every tool call of the main conversation is taught but the rejected one.
    assert coverage["tool_calls_lost:rejected"] == 1
    assert coverage["tool_calls_lost:unaccounted"] == 0
    main_calls = sum(len(t.tool_calls) for t in conv.turns)
    assert sum(k.count("toolu_") for k in keys) == main_calls - 1 == 185


def test_truncate_keeps_head_and_tail() -> None:
    text = "H" * 1000 + "T" * 1000
    out = truncate(text, 100)
    assert out.startswith("H" * 75) and out.endswith("T" * 25)
    assert "[... 1900 chars truncated ...]" in out
    assert truncate("short", 100) == "short"


def test_event_answer_is_not_the_prompts_answer_and_empty_output_is_marked(tmp_path: Path) -> None:
    session = Session(tmp_path / "sess-1.jsonl")
    session.user("Start the build server in the background and explain the config")
    session.assistant(
        {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "make &"}}
    )
    session.result("t1", "")
    session.assistant(
        {"type": "text", "text": "The server is building; the config module sets the port."}
    )
    session.user(
        "<task-notification><task-id>b1</task-id><status>completed</status></task-notification>"
    )
    session.assistant({"type": "text", "text": "The background build finished."})
    session.save()
    conv = load_session(session.path)
    assert conv.skipped["task_notification"] == 1
    samples = curate(conv, CurateOptions(multi_turn_tiers=("A", "B", "C")))
    multi = next(s for s in samples if s.strategy == "A")
    assert [m["role"] for m in multi.messages] == ["user", "assistant", "tool", "assistant"]
    assert multi.messages[2]["content"] == "(no output)"
    assert multi.messages[3]["content"] == (
        "The server is building; the config module sets the port.\n\nThe background build finished."
    )
    assert not [s for s in samples if s.strategy == "B"]  # the exchange made a call


def test_subagent_starting_with_assistant_gets_the_task_prompt(tmp_path: Path) -> None:
    main = Session(tmp_path / "sess-1.jsonl")
    main.user("Review the parser module")
    task_input = {"prompt": "Review parser.py for bugs", "subagent_type": "general-purpose"}
    main.assistant({"type": "tool_use", "id": "task-1", "name": "Task", "input": task_input})
    main.result("task-1", "no bugs", toolUseResult={"agentId": "c8d9b115"})
    main.assistant({"type": "text", "text": "No bugs found."})
    main.save()
    agent = Session(tmp_path / "agent-c8d9b115.jsonl", agent_id="c8d9b115")
    agent.assistant(
        {"type": "tool_use", "id": "r1", "name": "Read", "input": {"file_path": "parser.py"}}
    )
    agent.result("r1", "def parse(): ...")
    agent.assistant({"type": "text", "text": "No bugs in parser.py."})
    agent.save()
    samples = curate(load_session(main.path), CurateOptions(subagent_tiers=("A", "B", "C")))
    sub = next(s for s in samples if s.strategy == "D")
    assert sub.messages[0] == {"role": "user", "content": "Review parser.py for bugs"}
    assert [m["role"] for m in sub.messages] == ["user", "assistant", "tool", "assistant"]
    assert sub.id == stable_id("sessions", "sess-1", "D", "task-1")
    assert sub.meta["agent_id"] == "c8d9b115" and sub.group == "sess-1"


def test_empty_file_and_missing_dir_are_counted(tmp_path: Path) -> None:
    empty = tmp_path / "proj" / "sess-0.jsonl"
    empty.parent.mkdir()
    empty.touch()
    result = SessionCollector([tmp_path, tmp_path / "nowhere"]).collect(Cursors())
    assert result.samples == []
    assert result.skipped["empty_session"] == 1 and result.skipped["missing_dir"] == 1
    assert result.replace_keys == {str(empty)}
    assert json.loads(result.cursors[f"sessions:{empty}"])["size"] == 0
