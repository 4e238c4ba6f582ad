"""The augment job against a scripted OpenAI-wire teacher: exact counts, provenance, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.pipeline.ingest import store_result
from sam_brain.pipeline.split import assign_split
from sam_brain.protocols import CollectResult, Sample, TeacherReply
from sam_brain.teach.augment import ANSWER_SYSTEM, DOC_SYSTEM, below_bar, grounded
from sam_brain.teach.jobs import JobSpec, json_array
from sam_brain.teach.runner import run_job
from tests.scripted_openai import ScriptedServer, system_text, user_text

DOC = """# Deploying the frobnicator

The frobnicator reads its settings from frob.toml in the project root and refuses to start
when the port setting is missing. Restart it with `frob restart --graceful` after every change,
so open connections drain before the old process exits.
"""
TOPICS = ["parser", "cache", "queue", "logger", "router"]


def train_groups(n: int) -> list[str]:
    """Group names whose samples the pipeline puts in the train split (it hashes the group)."""
    out, i = [], 0
    while len(out) < n:
        if assign_split(f"session-{i}", "sessions", (0.9, 0.05, 0.05)) == "train":
            out.append(f"session-{i}")
        i += 1
    return out


def weak_sample(i: int, group: str, tier: str = "B", tool_call: bool = False) -> Sample:
    topic = TOPICS[i]
    last: dict[str, Any] = {"role": "assistant", "content": f"maybe restart the {topic} thing"}
    if tool_call:
        last = {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "Bash", "arguments": '{"command": "ls"}'},
                }
            ],
        }
    return Sample(
        id=f"weak-{i}",
        source="sessions",
        source_key=f"file-{i}.jsonl",
        group=group,
        messages=[
            {"role": "user", "content": f"Why does the {topic} module crash on start?"},
            last,
        ],
        tier=tier,
    )


GOOD = (
    "The {topic} module crashes because its config file is missing: create it with the default "
    "template, check the permissions of the folder, then start the service again and read its log."
)


FAILED: set[str] = set()


def script(body: dict[str, Any]) -> str | int:
    system, user = system_text(body), user_text(body)
    if system == ANSWER_SYSTEM:
        topic = next(t for t in TOPICS if f"the {t} module" in user)
        if topic == "logger" and topic not in FAILED:
            FAILED.add(topic)  # the server fails once: counted, and asked again on the rerun
            return 500
        return {
            "parser": GOOD.format(topic="parser"),
            "cache": "Fixed.",  # a pair, but below the SFT bar (too short)
            "queue": "I'm sorry, I cannot help with inspecting the queue module's startup crash.",
            "logger": GOOD.format(topic="logger"),
        }[topic]
    assert system == DOC_SYSTEM
    return (
        "```json\n"
        + json.dumps(
            [
                {  # quotes the doc word for word
                    "question": "Where does the frobnicator read its settings from?",
                    "answer": 'The docs say it "reads its settings from frob.toml in the project root".',
                    "quote": "reads its settings from frob.toml in the project root",
                },
                {  # cites the doc by name with a verbatim quote
                    "question": "How should I restart it?",
                    "answer": "Per frob.md, use a graceful restart so connections drain first.",
                    "quote": "so open connections drain before the old process exits",
                },
                {  # invented: neither quoted nor cited
                    "question": "Which database does it use?",
                    "answer": "It stores everything in PostgreSQL 16 with logical replication.",
                    "quote": "PostgreSQL 16 with logical replication",
                },
                {"question": "missing answer"},
            ]
        )
        + "\n```"
    )


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Home, Path]:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "frob.md").write_text(DOC)
    (docs / "empty.md").write_text("  \n")
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "home"),
            "sources": {"docs_paths": [str(docs)]},
            "teacher": {"provider": "openai", "model": "scripted", "max_retries": 0},
        }
    )
    home = Home.open(cfg)
    groups = train_groups(6)
    samples = [weak_sample(i, groups[i]) for i in range(4)]
    samples.append(weak_sample(4, groups[4], tool_call=True))  # ends on a tool call: skipped
    samples.append(weak_sample(4, groups[5], tier="A"))  # tier A: not augmented
    samples[-1].id = "strong"
    report = store_result(home, "sessions", CollectResult(samples=samples))
    assert report.stored == 6
    return home, docs


def test_augment_makes_pairs_sft_and_grounded_doc_pairs(setup: tuple[Home, Path]) -> None:
    home, _ = setup
    FAILED.clear()
    spec = JobSpec(kind="augment", options={"per_doc": 4})
    with ScriptedServer(script) as server:
        teacher = _teacher(server.url)
        status = run_job(home, spec, teacher=teacher)
        assert status.state == "done", status.error
        assert len(server.calls) == 5  # 4 tier-B answers + 1 non-empty doc
        c = status.counts
        assert c["preference_pairs"] == 3 and c["sft_samples"] == 1
        assert c["below_bar_short"] == 1 and c["below_bar_refusal"] == 1
        assert c["final_turn_is_tool_call"] == 1 and c["doc_empty"] == 1
        assert c["teacher_error"] == 1
        assert c["doc_pairs"] == 2 and c["ungrounded"] == 1 and c["malformed_pair"] == 1
        assert status.stored == 6, json.dumps(c)  # 3 pairs + 1 SFT + 2 doc pairs

        taught = [s for s, _ in home.pool.samples() if s.source == "teacher"]
        pairs = [s for s in taught if s.kind == "preference"]
        assert sorted(s.meta["original_id"] for s in pairs) == ["weak-0", "weak-1", "weak-2"]
        parser = next(s for s in pairs if s.meta["original_id"] == "weak-0")
        assert parser.chosen == GOOD.format(topic="parser")
        assert parser.rejected == "maybe restart the parser thing"
        weak0 = next(s for s, _ in home.pool.samples() if s.id == "weak-0")
        assert parser.group == weak0.group  # a session never straddles the splits
        assert parser.meta["teacher_model"] == "scripted" and parser.meta["job"] == status.job_id
        sft = [s for s in taught if s.kind == "sft" and s.meta.get("made") == "sft"]
        assert len(sft) == 1 and sft[0].messages[-1]["content"] == parser.chosen
        docs = [s for s in taught if s.meta.get("made") == "doc_qa"]
        assert {d.messages[0]["content"] for d in docs} == {
            "Where does the frobnicator read its settings from?",
            "How should I restart it?",
        }
        assert all(d.meta["doc"].endswith("frob.md") for d in docs)

        # The rerun asks only what failed (the logger answer), and replays the rest for free.
        status2 = run_job(home, spec, teacher=teacher)
        assert status2.state == "done", status2.error
        assert len(server.calls) == 6
        assert "the logger module" in user_text(server.calls[-1])
        assert status2.counts["preference_pairs"] == 4 and status2.counts["sft_samples"] == 2
        assert status2.counts["final_turn_is_tool_call"] == 1  # skips are counted once a job
        status3 = run_job(home, spec, teacher=teacher)
        assert len(server.calls) == 6 and status3.state == "done"
    assert len([s for s, _ in home.pool.samples() if s.source == "teacher"]) == 8


def _teacher(url: str) -> Any:
    from sam_brain.config import TeacherConfig
    from teachers.openai_api import OpenAITeacher

    return OpenAITeacher(
        TeacherConfig(provider="openai", model="scripted", base_url=url, max_retries=0)
    )


def test_grounding_rule() -> None:
    doc = "Restart it with frob restart --graceful after every change so connections drain."
    quote = "frob restart --graceful after every change"
    assert grounded("Run frob restart graceful after every change, it drains.", "", doc, "f.md")
    assert grounded("See f.md: restart gracefully.", quote, doc, "f.md")
    assert not grounded(
        "See f.md: restart gracefully.", "made up words that are not there", doc, "f.md"
    )
    assert not grounded("Restart gracefully.", quote, doc, "f.md")  # a quote but no citation


def test_quality_bar_and_parsing() -> None:
    long = "x" * 60
    assert below_bar(TeacherReply(text=long, model="m", stop_reason="stop"), "old") is None
    assert below_bar(TeacherReply(text=long, model="m", stop_reason="length"), "old") == (
        "below_bar_truncated"
    )
    assert below_bar(TeacherReply(text=long, model="m"), long) == "below_bar_unchanged"
    assert json_array('Here: [{"question": "q"}] done') == [{"question": "q"}]
    assert json_array("no json") is None


def test_pairs_dedup_among_pairs_but_not_against_sft(tmp_path: Path) -> None:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "home")}))
    prompt = [{"role": "user", "content": "How do I rotate the nginx logs every night at two?"}]
    answer = "Add a logrotate rule for /var/log/nginx/*.log with daily, rotate 14 and compress."
    old = "Just delete the log files by hand whenever the disk runs full, that works too."

    def pair(i: int) -> Sample:
        return Sample(
            f"p{i}", "teacher", "k", "g", prompt, kind="preference", chosen=answer, rejected=old
        )

    sft = Sample("s", "teacher", "k", "g", [*prompt, {"role": "assistant", "content": answer}])
    report = store_result(home, "teacher", CollectResult(samples=[pair(1), sft, pair(2)]))
    assert report.stored == 2 and report.dropped["duplicate"] == 1
    assert {s.id for s, _ in home.pool.samples()} == {"p1", "s"}
    home.close()


def test_augment_through_the_api_over_loopback(setup: tuple[Home, Path], tmp_path: Path) -> None:
    import time
    import urllib.request

    from sam_brain.control.api import make_app
    from sam_brain.control.app import AppContext
    from sam_brain.dev.demo import free_port
    from sam_brain.dev.teacher_wire import serve_app
    from sam_brain.train.scheduler import Coordinator
    from tests.api_auth import auth_headers

    home, docs = setup
    FAILED.clear()
    FAILED.add("logger")  # the logger answer succeeds at once here

    def call(url: str, method: str, path: str, body: Any = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**auth_headers(home.data), "Content-Type": "application/json"}
        req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())

    with ScriptedServer(script) as teacher_server:
        cfg = parse_config(
            {
                "data_dir": str(home.data),
                "sources": {"docs_paths": [str(docs)]},
                "teacher": {
                    "provider": "openai",
                    "model": "scripted",
                    "base_url": teacher_server.url,
                },
            }
        )
        api_home = Home.open(cfg)
        ctx = AppContext(
            home=api_home, coordinator=Coordinator(api_home, "mlx"), backend="mlx", backend_why="t"
        )
        port = free_port()
        with serve_app(make_app(ctx, port), port) as url:
            code, doc = call(
                url, "POST", "/api/teach", {"kind": "augment", "options": {"per_doc": 4}}
            )
            assert code == 202 and doc["job_id"].startswith("augment-")
            deadline = time.monotonic() + 60
            while (status := call(url, "GET", "/api/teach")[1])["teaching"]:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        job = status["current"]
        assert job["state"] == "done", job["error"]
        c = job["counts"]
        assert (c["preference_pairs"], c["sft_samples"], c["doc_pairs"], c["ungrounded"]) == (
            4,
            2,
            2,
            1,
        )
        assert job["stored"] == 8 and len(teacher_server.calls) == 5
        api_home.close()
