"""Issue 11, curation half: every tool call of a kept session taught once, nothing false taught.

On the real fixtures: coverage is a reported number (ingest report, `samctl data stats`) of at
least 90%; a single-turn sample never strips calls; a rejected call becomes a preference pair and
is never a target; context turns of a window are masked out of the loss.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.masking import encode_chat
from sam_brain.pipeline.ingest import ingest
from sam_brain.pipeline.windowing import build, plan, split_rows

REPO = Path(__file__).resolve().parents[1]
SESSIONS = REPO.parent / "shared" / "fixtures" / "claude-sessions"
SPOTTER = "spotter/258c7280-ae70-4798-800f-63464d01a85d.jsonl"


@pytest.fixture(scope="module")
def fixtures() -> Path:
    if not SESSIONS.is_dir():
        pytest.skip("../shared fixtures are not present")
    return SESSIONS


@pytest.fixture(scope="module")
def ingested(fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Home, Any]:
    from collectors.sessions import SessionCollector

    root = tmp_path_factory.mktemp("cov")
    home = Home.open(parse_config({"data_dir": str(root / "home")}))
    report = ingest(home, SessionCollector(dirs=[fixtures], quiet_minutes=0.0))
    return home, report


def raw_tool_calls(path: Path) -> set[str]:
    """Distinct `tool_use` ids in a transcript, read straight from its JSON lines."""
    ids = set()
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        message = rec.get("message") if isinstance(rec, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_use":
                ids.add(block["id"])
    return ids


def taught_calls(home: Home) -> list[str]:
    return [
        call["id"]
        for sample, _ in home.pool.samples(kind="sft")
        for m in sample.messages
        if m["role"] == "assistant" and m.get("weight", 1) != 0
        for call in m.get("tool_calls") or ()
    ]


def test_ingest_report_counts_every_tool_call_and_teaches_90_percent(
    ingested: tuple[Home, Any], fixtures: Path
) -> None:
    home, report = ingested
    total = report.coverage["total"]
    seen = set().union(*(raw_tool_calls(p) for p in fixtures.rglob("*.jsonl")))
    # Every call in the files is seen (none vanish before they are counted) ...
    assert total["tool_calls_seen"] == len(seen) == 392
    # ... each one the pool teaches is taught once, and the report says exactly how many.
    taught = taught_calls(home)
    assert len(taught) == len(set(taught)) == total["tool_calls_supervised"] == 378
    assert set(taught) <= seen
    assert total["tool_calls_supervised"] / total["tool_calls_seen"] >= 0.90
    # What is not taught is lost for a named reason, and the reasons add up.
    lost = {k.split(":", 1)[1]: v for k, v in total.items() if k.startswith("tool_calls_lost:")}
    assert "unaccounted" not in lost
    assert sum(lost.values()) + total["tool_calls_supervised"] == total["tool_calls_seen"]
    assert lost["rejected"] == 1 and lost["pipeline_too_long"] == 1
    # Slash-command sessions start with no typed prompt: the command's context is their prompt.
    assert lost.get("before_first_prompt", 0) == 0
    assert total["sessions_without_samples"] == 4
    # Per file: the long spotter session (one prompt, 186 calls) is taught but its rejected one
    # and one 22k-character Write longer than a window.
    spotter = report.coverage["files"][str(fixtures / SPOTTER)]
    assert spotter["tool_calls_seen"] == 188  # 186 + 2 in its subagent
    assert spotter["tool_calls_supervised"] == 186
    assert spotter["tool_calls_lost:rejected"] == spotter["tool_calls_lost:pipeline_too_long"] == 1
    # The report on disk holds the same figures.
    saved = json.loads(sorted(home.reports_dir.glob("ingest-*.json"))[-1].read_text())
    assert saved["coverage"]["total"] == total


def test_data_stats_gives_coverage_per_file_and_in_total(fixtures: Path, tmp_path: Path) -> None:
    env = {**os.environ, "SAM_BRAIN_HOME": str(tmp_path / "home")}
    env.pop("SAM_BRAIN_CONFIG", None)
    cli = [sys.executable, "-m", "sam_brain.control.cli"]
    for _ in range(2):  # a second ingest replaces each file's figures; it does not add to them
        subprocess.run([*cli, "ingest", "sessions", str(fixtures), "--now"], env=env, check=True,
                       capture_output=True)  # fmt: skip
    out = subprocess.run([*cli, "data", "stats", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    coverage = json.loads(out)["coverage"]
    assert coverage["total"]["tool_calls_seen"] == 392
    assert coverage["total"]["tool_calls_share"] >= 0.90
    assert coverage["total"]["files"] == len(coverage["files"]) == 8
    short = coverage["files"][str(fixtures.resolve() / "spotter" / "short.jsonl")]
    assert short == {
        "assistant_turns_lost:tier_C": 1,
        "assistant_turns_seen": 1,
        "sessions_without_samples": 1,
        "tool_calls_lost:tier_C": 2,
        "tool_calls_seen": 2,
    }


def test_no_single_turn_sample_strips_calls_or_repeats_taught_text(
    ingested: tuple[Home, Any],
) -> None:
    home, _ = ingested
    samples = [s for s, _ in home.pool.samples(kind="sft")]
    singles = [s for s in samples if s.strategy == "B"]
    taught_text: dict[str, int] = {}
    for s in samples:
        for m in s.messages:
            if m["role"] == "assistant" and m.get("weight", 1) != 0 and m["content"]:
                taught_text[m["content"]] = taught_text.get(m["content"], 0) + 1
    assert all(n == 1 for n in taught_text.values())
    for s in singles:  # fixtures' B samples come from call-free exchanges only
        assert [m["role"] for m in s.messages] == ["user", "assistant"]
        assert "tool_calls" not in s.messages[1]


def test_rejected_call_is_a_preference_pair_and_never_a_target(
    ingested: tuple[Home, Any],
) -> None:
    home, _ = ingested
    pairs = [s for s, _ in home.pool.samples(kind="preference")]
    assert [p.meta["rejected_call"] for p in pairs] == ["toolu_011NXYeWWxrZPLNNT8pFAZPi"]
    pair = pairs[0]
    # The user interrupted a wait on a background task; the next action checks its output.
    assert pair.rejected.count("<tool_call>") == 1 and '"name": "TaskOutput"' in pair.rejected
    assert pair.chosen and pair.chosen != pair.rejected
    assert pair.messages[0]["role"] == "user" and pair.messages[-1]["role"] in ("user", "tool")
    # The rejected call shows up only as unsupervised context.
    for sample, _ in home.pool.samples(kind="sft"):
        for m in sample.messages:
            ids = {c["id"] for c in m.get("tool_calls") or ()}
            if "toolu_011NXYeWWxrZPLNNT8pFAZPi" in ids:
                assert m.get("weight") == 0


def test_context_turns_are_masked_and_the_rest_supervised(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    call = {"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "List files."},
        {"role": "assistant", "content": "Listing.", "tool_calls": [call], "weight": 0},
        {"role": "tool", "tool_call_id": "c1", "content": "a.py"},
        {"role": "assistant", "content": "One file: a.py"},
    ]
    ids, mask = encode_chat(tokenizer, messages, max_length=4096)
    taught = tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert taught == "One file: a.py<|im_end|>"


def step(i: int, size: int = 40) -> list[dict[str, Any]]:
    call = {"id": f"c{i}", "type": "function", "function": {"name": "ls", "arguments": "{}"}}
    return [
        {"role": "assistant", "content": f"step {i}", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"c{i}", "content": "x" * size},
    ]


def test_plan_cuts_a_long_exchange_so_each_step_is_taught_once() -> None:
    messages = [{"role": "user", "content": "do it"}]
    for i in range(30):
        messages += step(i)
    messages.append({"role": "assistant", "content": "done"})
    count = lambda m: 10  # noqa: E731 - every message 10 tokens: a step is 20
    windows = plan(messages, 100, count)
    built = [build(messages, w) for w in windows]
    taught = [
        m["content"] for b in built for m in b if m["role"] == "assistant" and "weight" not in m
    ]
    assert taught == [f"step {i}" for i in range(30)] + ["done"]
    assert all(sum(map(count, b)) <= 100 + 16 for b in built)  # the note is a few tokens more
    for w, b in zip(windows[1:], built[1:], strict=True):
        assert b[0]["content"].startswith("do it")
        assert w.context and b[1].get("weight") == 0  # the step just before, as context
        body = sorted(set(w.indices) - w.context - {0})
        assert max(w.context) + 1 == body[0]  # the context is the steps just before
        assert w.elided == (min(w.context) - 1) // 2  # and all before it is elided


def test_split_rows_recuts_only_rows_over_the_budget() -> None:
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    long = [{"role": "system", "content": "S"}, {"role": "user", "content": "go"}]
    for i in range(10):
        long += step(i)
    long.append({"role": "assistant", "content": "done"})
    rows, split = split_rows([short, long], 70, lambda m: 10)
    assert split == 1 and rows[0] == short
    assert all(r[0]["role"] == "system" and sum(10 for _ in r) <= 70 + 10 for r in rows[1:])
    taught = [
        m["content"] for r in rows[1:] for m in r if m["role"] == "assistant" and "weight" not in m
    ]
    assert taught == [f"step {i}" for i in range(10)] + ["done"]


def test_dataset_build_recuts_long_rows_so_training_truncates_nothing(
    tmp_path: Path, tiny_model: Path
) -> None:
    from transformers import AutoTokenizer

    from sam_brain.masking import encode_rows, load_rows
    from sam_brain.pipeline.tokens import TEMPLATE_RESERVE, tokenizer_counter
    from sam_brain.pipeline.windowing import tools_tokens
    from sam_brain.pool import file_lock
    from sam_brain.protocols import Sample, stable_id
    from sam_brain.train.job import build_dataset

    long_row = [{"role": "user", "content": "fix the parser"}]
    for i in range(12):
        long_row += step(i, size=120)
    long_row.append({"role": "assistant", "content": "done"})
    # 160 tokens of room per window beside the rendered tools block of the row's one tool.
    counter = tokenizer_counter(tiny_model)
    assert counter is not None
    length = 160 + int(tools_tokens(long_row, counter) / (1 - TEMPLATE_RESERVE)) + 1
    cfg = {
        "data_dir": str(tmp_path / "data"),
        "training": {"profile": "p"},
        "profiles": {"p": {"max_seq_length": length}},
    }
    home = Home.open(parse_config(cfg))
    huge = [
        {"role": "user", "content": "write the file"},
        {"role": "assistant", "content": "x " * 400},  # one step longer than the length
    ]
    rows = []
    for i, messages in enumerate([long_row, huge]):
        sample = Sample(stable_id("t", str(i)), "sessions", "k", f"g{i}", messages)
        rows.append((sample, "train"))
    with file_lock(home.pool.lock_path):
        home.pool.upsert(rows)
    counts = build_dataset(home, tmp_path / "ds", base=tiny_model)
    assert counts["resplit"] == 2 and counts["too_long"] == 1
    written = load_rows(tmp_path / "ds" / "train.jsonl") + load_rows(
        tmp_path / "ds" / "valid.jsonl"
    )
    taught = [
        m["content"] for r in written for m in r if m["role"] == "assistant" and "weight" not in m
    ]
    assert taught == [f"step {i}" for i in range(12)] + ["done"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    _, stats = encode_rows(tokenizer, written, length)
    assert stats.truncated == 0 and stats.kept == len(written) > 1
    home.close()


def test_windows_fit_in_the_base_models_own_tokens(tiny_model: Path, fixtures: Path) -> None:
    from collectors.curate import curate
    from collectors.sessions import load_session
    from collectors.turn_windows import CurateOptions
    from sam_brain.config import Config
    from sam_brain.pipeline.tokens import message_counter, tokenizer_counter, window_tokens
    from sam_brain.pipeline.windowing import estimate_tokens

    count = tokenizer_counter(tiny_model)
    assert count is not None and tokenizer_counter(tiny_model / "missing") is None
    assert count.many([{"role": "user", "content": "hi there"}]) == [  # type: ignore[attr-defined]
        count({"role": "user", "content": "hi there"})
    ]
    # The default base models are not on this machine: the conservative estimate is used.
    assert message_counter(Config()) is estimate_tokens
    assert window_tokens(Config()) == int(2048 * 0.9)  # the 8gb profile, less the reserve
    conv = load_session(fixtures / SPOTTER)
    options = CurateOptions(max_tokens=1500, count=count)
    windows = [s for s in curate(conv, options) if s.kind == "sft"]
    sizes = [sum(map(count, s.messages)) for s in windows]
    single = [s for s, n in zip(windows, sizes, strict=True) if n > 1500]
    # Every window fits in the tokenizer's own count, but those holding one over-long step.
    assert all(sum(m["role"] == "assistant" and "weight" not in m for m in s.messages) == 1
               for s in single)  # fmt: skip
    assert len(single) < len(windows) // 4
