"""Tests for sam_brain.dev.examples: format fidelity, tree integrity, subagents, determinism, variety."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import defaultdict
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.examples import (
    FUNC_FORMS,
    KINDS,
    MODULES,
    SLUG_WORDS,
    SOURCE,
    TEMPLATES,
    example_session,
    example_session_lines,
    write_example_sessions,
)

SPOTTER = (
    Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "claude-sessions" / "spotter"
)
Line = dict[str, Any]


def _load(path: Path) -> list[Line]:
    lines = [json.loads(raw) for raw in path.read_text(encoding="utf-8").splitlines()]
    assert all(isinstance(x, dict) for x in lines)
    return lines


def _is_prompt(x: Line) -> bool:
    return x["type"] == "user" and isinstance(x["message"]["content"], str)


def _block(x: Line) -> Line:
    """The single content block of an assistant line ({} for other lines)."""
    return x["message"]["content"][0] if x["type"] == "assistant" else {}


def _is_text(x: Line) -> bool:
    return _block(x).get("type") == "text" and bool(_block(x)["text"].strip())


def _prompts(lines: list[Line]) -> list[str]:
    return [x["message"]["content"] for x in lines if _is_prompt(x)]


def _main_path(lines: list[Line]) -> list[Line]:
    """Walk from the newest chained line to the root, as a reader that keeps one branch does."""
    by_id = {x["uuid"]: x for x in lines if "uuid" in x}
    node: Line | None = [x for x in lines if "uuid" in x][-1]
    path = []
    while node is not None:
        path.append(node)
        node = by_id.get(node["parentUuid"]) if node["parentUuid"] else None
    return path[::-1]


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("projects")
    return root, write_example_sessions(root, n_sessions=12)


def test_layout_and_jsonl(written: tuple[Path, list[Path]]) -> None:
    root, paths = written
    project = root / "-home-dev-demo-project"
    assert len(paths) == 12 and len(set(paths)) == 12
    assert sorted(project.glob("*.jsonl")) == sorted(paths)
    agents = sorted(project.glob("*/subagents/agent-*.jsonl"))
    assert len(agents) == 3  # sessions 1, 6 and 11
    for path in paths:
        lines = _load(path)
        assert path.stem == lines[0]["sessionId"]
        assert re.fullmatch(r"[0-9a-f-]{36}", path.stem)
        assert {x.get("version") for x in lines if "uuid" in x} == {"2.1.39"}
        assert all(x["cwd"] == "/home/dev/demo-project" for x in lines if "uuid" in x)
        for x in lines:
            if "timestamp" in x:
                assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", x["timestamp"])


def test_parents_resolve_and_tree_shape(written: tuple[Path, list[Path]]) -> None:
    root, paths = written
    files = paths + sorted(root.glob("*/*/subagents/*.jsonl"))
    for path in files:
        lines = _load(path)
        chained = [x for x in lines if "uuid" in x]
        ids = [x["uuid"] for x in chained]
        assert len(ids) == len(set(ids))
        assert all(x["parentUuid"] in ids for x in chained if x["parentUuid"] is not None)
        roots = [x for x in chained if x["parentUuid"] is None]
        assert len(roots) == 1
        # Parents come before children in file order.
        seen: set[str] = set()
        for x in chained:
            assert x["parentUuid"] is None or x["parentUuid"] in seen
            seen.add(x["uuid"])
        if "subagents" in path.parts:
            assert roots[0]["type"] == "user" and chained[0] is roots[0]
        else:
            assert roots[0]["type"] == "progress"
            assert roots[0]["data"]["hookEvent"] == "SessionStart"


def test_assistant_messages_and_tool_pairing(written: tuple[Path, list[Path]]) -> None:
    _, paths = written
    n_forks = 0
    for path in paths:
        lines = _load(path)
        by_id = {x["uuid"]: x for x in lines if "uuid" in x}
        groups: dict[str, list[int]] = defaultdict(list)
        for i, x in enumerate(lines):
            if x["type"] == "assistant":
                assert len(x["message"]["content"]) == 1
                groups[x["message"]["id"]].append(i)
        for msg_id, idx in groups.items():
            span = lines[idx[0] : idx[-1] + 1]
            # Only hook progress and snapshots may sit between lines of one message.
            others = [x for x in span if x["type"] == "assistant" and x["message"]["id"] != msg_id]
            assert not others and not [x for x in span if x["type"] == "user"]
            assert len({lines[i]["requestId"] for i in idx}) == 1
        uses = {_block(x)["id"]: x for x in lines if _block(x).get("type") == "tool_use"}
        results = [x for x in lines if x["type"] == "user" and not _is_prompt(x)]
        assert len(results) == len(uses)
        for r in results:
            block = r["message"]["content"][0]
            assert len(r["message"]["content"]) == 1 and block["type"] == "tool_result"
            use = uses[block["tool_use_id"]]
            assert r["parentUuid"] == use["uuid"] == r["sourceToolAssistantUUID"]
            assert "toolUseResult" in r
            assert isinstance(r["toolUseResult"], str) == bool(block.get("is_error"))
        children: dict[str, int] = defaultdict(int)
        for x in by_id.values():
            if x["parentUuid"]:
                children[x["parentUuid"]] += 1
        n_forks += sum(1 for u in uses.values() if children[u["uuid"]] > 1)
    assert n_forks > 5  # parallel calls and hooks fork the tree, as in real 2.1.x files


def test_real_line_features_present(written: tuple[Path, list[Path]]) -> None:
    _, paths = written
    everything = [x for p in paths for x in _load(p)]
    kinds = {x["type"] for x in everything}
    assert kinds == {"progress", "user", "assistant", "system", "file-history-snapshot"}
    blocks = [_block(x) for x in everything if x["type"] == "assistant"]
    assert any(b["type"] == "thinking" and b["thinking"] for b in blocks)
    tools = {b["name"] for b in blocks if b["type"] == "tool_use"}
    assert {"Read", "Edit", "Bash", "Grep", "Task"} <= tools
    progress = [x for x in everything if x["type"] == "progress"]
    hooks = {x["data"]["hookEvent"] for x in progress if x["data"]["type"] == "hook_progress"}
    assert hooks == {"SessionStart", "PreToolUse", "PostToolUse", "Stop"}
    # Progress lines are links in the chain: some assistant lines hang off a PreToolUse hook.
    hook_ids = {x["uuid"] for x in progress}
    assert sum(x["parentUuid"] in hook_ids for x in everything if x["type"] == "assistant") > 5
    for path in paths:
        lines = _load(path)
        assert [x["subtype"] for x in lines if x["type"] == "system"].count("turn_duration") >= 1
        assert lines[-1]["type"] == "system" and lines[-1]["durationMs"] > 0
        for i, x in enumerate(lines):
            if x["type"] == "file-history-snapshot" and not x["isSnapshotUpdate"]:
                assert lines[i + 1]["uuid"] == x["messageId"] and lines[i + 1]["type"] == "user"


@pytest.mark.skipif(not SPOTTER.is_dir(), reason="shared fixtures not available")
def test_line_keys_match_real_fixture(written: tuple[Path, list[Path]]) -> None:
    def kind(x: Line) -> str:
        if x["type"] == "user":
            return "result" if isinstance(x["message"]["content"], list) else "prompt"
        return f"{x['type']}:{x.get('subtype') or x.get('data', {}).get('type', '')}"

    real: dict[str, set[str]] = defaultdict(set)
    for path in SPOTTER.glob("*.jsonl"):
        for x in _load(path):
            real[kind(x)] |= set(x)
    _, paths = written
    for x in (x for p in paths for x in _load(p)):
        assert kind(x) in real, kind(x)
        assert set(x) <= real[kind(x)], (kind(x), set(x) - real[kind(x)])


def test_subagent_files_link_to_parent(written: tuple[Path, list[Path]]) -> None:
    root, _ = written
    for agent_file in sorted(root.glob("*/*/subagents/agent-*.jsonl")):
        agent_id = agent_file.stem.removeprefix("agent-")
        assert re.fullmatch(r"a[0-9a-f]{6}", agent_id)
        session_id = agent_file.parent.parent.name
        side = _load(agent_file)
        assert all(x["isSidechain"] and x["agentId"] == agent_id for x in side)
        assert all(x["sessionId"] == session_id for x in side)
        models = {x["message"]["model"] for x in side if x["type"] == "assistant"}
        assert models == {"claude-haiku-4-5-20251001"}
        main = _load(agent_file.parent.parent.with_suffix(".jsonl"))
        task = next(x for x in main if _block(x).get("name") == "Task")
        assert side[0]["message"]["content"] == _block(task)["input"]["prompt"]
        result = next(x for x in main if x.get("sourceToolAssistantUUID") == task["uuid"])
        assert result["toolUseResult"]["agentId"] == agent_id
        assert result["toolUseResult"]["status"] == "completed"
        assert f"agentId: {agent_id}" in result["message"]["content"][0]["content"][-1]["text"]
        progress = [x for x in main if x["type"] == "progress"]
        mirrored = [x for x in progress if x["data"]["type"] == "agent_progress"]
        assert [m["data"]["message"]["uuid"] for m in mirrored] == [x["uuid"] for x in side]
        assert {m["parentToolUseID"] for m in mirrored} == {_block(task)["id"]}


def test_pair_extraction_yields_several_samples(written: tuple[Path, list[Path]]) -> None:
    _, paths = written
    total = 0
    for path in paths:
        path_lines = _main_path(_load(path))
        prompts = _prompts(path_lines)
        assert 2 <= len(prompts) <= 5
        assert prompts == _prompts(_load(path))  # every prompt lies on the newest branch
        # Each prompt is answered: its turn (up to the next prompt) ends with assistant text.
        starts = [i for i, x in enumerate(path_lines) if _is_prompt(x)] + [len(path_lines)]
        for a, b in itertools.pairwise(starts):
            replies = [x for x in path_lines[a + 1 : b] if x["type"] in ("user", "assistant")]
            assert replies and _is_text(replies[-1])
        total += len(prompts)
    assert total >= 30


def test_deterministic_per_seed(tmp_path: Path) -> None:
    start = datetime(2026, 1, 5, 8, tzinfo=UTC)
    a = write_example_sessions(tmp_path / "a", n_sessions=3, seed=7, start=start)
    b = write_example_sessions(tmp_path / "b", n_sessions=3, seed=7, start=start)
    assert [p.name for p in a] == [p.name for p in b]
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    c = write_example_sessions(tmp_path / "c", n_sessions=3, seed=8, start=start)
    assert not {p.name for p in a} & {p.name for p in c}
    assert _load(a[0])[0]["timestamp"].startswith("2026-01-05T08:00:00")
    assert example_session_lines(3) == example_session_lines(3)
    assert example_session(3).session_id != example_session(4).session_id


# Output of the default 12 sessions, pinned when the templates moved to data/example_templates.txt.
# Only an intended change to the templates or the writer may change it; update it then.
GOLDEN_SHA256 = "18a1db33702d4f99e8ec4c5aae8f0729b0966b8e124fd82b55c750a29cbe2219"


def test_output_is_byte_identical_to_pinned(written: tuple[Path, list[Path]]) -> None:
    root, paths = written
    digest = hashlib.sha256()
    files = sorted(root.rglob("*.jsonl"))
    assert len(files) == len(paths) + 3  # sessions 1, 6 and 11 each write one subagent file
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    assert digest.hexdigest() == GOLDEN_SHA256


def test_templates_load_from_package_data() -> None:
    text = (
        resources.files("sam_brain.dev").joinpath("data/example_templates.txt").read_text("utf-8")
    )
    assert text == TEMPLATES
    assert {k.split(":")[0] for k in KINDS} == {"first", "follow", "qa", "agent"}
    assert len([k for k in KINDS if k.startswith("first:")]) == 8
    assert len(MODULES.split()) == 14 and len(SLUG_WORDS.split()) == 26
    assert FUNC_FORMS[0] == "filter_{n}s" and SOURCE.startswith('"""{Noun} helpers')


def test_sessions_are_varied() -> None:
    sessions = [example_session(i, with_subagent=i % 7 == 0) for i in range(40)]
    firsts = [_prompts(s.lines)[0] for s in sessions]
    assert len(set(firsts)) >= 36
    answers = {_block(x)["text"] for s in sessions for x in s.lines if _is_text(x)}
    assert len(answers) > 120
    modules = {m for s in sessions for m in re.findall(r"src/demo/(\w+)\.py", json.dumps(s.lines))}
    assert len(modules - {"cli"}) >= 10


def test_no_secret_like_strings() -> None:
    text = json.dumps([example_session(i).lines for i in range(20)])
    patterns = [r"AKIA[0-9A-Z]{16}", r"sk-[A-Za-z0-9]{20,}", r"gh[pousr]_[A-Za-z0-9]{20,}"]
    patterns += [r"-----BEGIN", r"(?i)password\s*[:=]", r"xox[baprs]-"]
    for pattern in patterns:
        assert not re.search(pattern, text), pattern
    assert "@" not in re.sub(r"@v\d", "", text)  # no e-mail addresses
