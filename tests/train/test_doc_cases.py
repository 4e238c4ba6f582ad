"""Docs-grounded keyword cases: from headings and key terms without a teacher, and asked of a real
`OpenAITeacher` talking to a scripted OpenAI-wire aiohttp server on loopback; `samctl eval
make-cases` writes a case file the gate loads."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from deployment.cases import load_cases
from sam_brain.config import TeacherConfig
from sam_brain.control.cli import main
from sam_brain.dev.demo import free_port
from sam_brain.errors import BadRequest
from sam_brain.train.doc_cases import cases_from_docs, cases_from_docs_with_teacher, write_cases
from teachers.openai_api import OpenAITeacher

GUIDE = """# Deploy guide

Intro text that is long enough to be a section of its own, about versions.

## Rollback

Run `samctl rollback` to go back to the previous version. A running **canary** is aborted
first; the rollback_target is kept in versions.json. Rollback keeps the adapters on disk.

## Tiny

ok

## Exports

Exports are written under `<data>/exports` as GGUF files for llama.cpp and Ollama. Quantised
exports use q4_k_m by default; exports are rebuilt only with --force.
"""


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    root = tmp_path / "proj"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "deploy.md").write_text(GUIDE)
    (root / "node_modules").mkdir()
    (root / "node_modules" / "x.md").write_text("# Vendored\n\n" + "never read " * 10)
    return root


def test_cases_from_headings_and_key_terms(docs: Path, tmp_path: Path) -> None:
    made = cases_from_docs([docs])
    assert made.sections == 3  # intro, Rollback, Exports ("Tiny" is too short; vendored skipped)
    by_topic = {c.prompt: c for c in made.cases}
    rollback = by_topic['In proj, what does the documentation "Deploy guide" say about Rollback?']
    # Code, bold and identifiers first; words of the question itself never count.
    assert rollback.keywords == ("samctl rollback", "canary", "rollback_target", "versions.json")
    assert (rollback.category, rollback.source, rollback.scoring) == (
        "Deploy guide",
        "docs",
        "keywords",
    )
    exports = by_topic['In proj, what does the documentation "Deploy guide" say about Exports?']
    assert exports.keywords == ("<data>/exports", "GGUF", "llama.cpp", "q4_k_m")
    intro = by_topic['In proj, what does the documentation "Deploy guide" say in its introduction?']
    assert len(intro.keywords) >= 2 and all(
        k.casefold() in GUIDE.casefold() for k in intro.keywords
    )
    assert made.skipped == {}
    # Written as a case file, they load back unchanged.
    out = tmp_path / "docs-cases.jsonl"
    write_cases(made.cases, out)
    assert load_cases(out) == made.cases
    assert cases_from_docs([docs], max_cases=1).skipped == {"over max_cases": 2}
    with pytest.raises(BadRequest, match="no such docs file or folder"):
        cases_from_docs([tmp_path / "nope"])


class ScriptedOpenAI:
    """An OpenAI-wire chat server on loopback that answers from a script, in a thread."""

    def __init__(self, replies: list[str]) -> None:
        self.replies = replies
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(body)
        if not self.replies:
            return web.json_response({"error": {"message": "script ran out"}}, status=500)
        text = self.replies.pop(0)
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": 0,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            }
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> ScriptedOpenAI:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def scripted() -> Iterator[type[ScriptedOpenAI]]:
    yield ScriptedOpenAI


def test_teacher_writes_grounded_cases(docs: Path, scripted: type[ScriptedOpenAI]) -> None:
    replies = [
        "not JSON at all",  # intro: skipped
        '```json\n{"question": "How do I undo a release?", "keywords": ["samctl rollback",'
        ' "canary", "made-up-term", "canary"]}\n```',
        '{"question": "Where do exports go?", "keywords": ["s3 bucket", "Ollama"]}',
    ]
    with scripted(replies) as server:
        config = TeacherConfig(
            provider="openai", model="teacher-1", base_url=f"http://127.0.0.1:{server.port}/v1",
            max_retries=0,
        )  # fmt: skip
        made = cases_from_docs_with_teacher(OpenAITeacher(config), [docs])
    assert len(server.requests) == 3
    first = server.requests[1]
    assert first["model"] == "teacher-1" and first["messages"][0]["role"] == "system"
    assert "copied exactly from the section" in first["messages"][0]["content"]
    assert "Section: Deploy guide > Rollback" in first["messages"][1]["content"]
    assert "Run `samctl rollback`" in first["messages"][1]["content"]
    assert len(made.cases) == 1
    case = made.cases[0]
    # Terms not in the section are dropped; duplicates kept once.
    assert case.prompt == "How do I undo a release?" and case.source == "docs-teacher"
    assert case.keywords == ("samctl rollback", "canary")
    assert made.skipped == {
        "teacher reply not a question object": 1,
        "teacher keywords not in the section": 1,  # only "Ollama" is grounded: fewer than two
    }


def test_teacher_errors_are_counted_not_fatal(docs: Path, scripted: type[ScriptedOpenAI]) -> None:
    with scripted([]) as server:  # every request answers 500
        config = TeacherConfig(
            provider="openai", model="m", base_url=f"http://127.0.0.1:{server.port}/v1",
            max_retries=0,
        )  # fmt: skip
        made = cases_from_docs_with_teacher(OpenAITeacher(config), [docs])
    assert made.cases == [] and made.skipped == {"teacher error": 3}
    assert made.errors[0].endswith("HTTP 500 for model 'm'")


def test_samctl_make_cases_writes_a_case_file(
    docs: Path, home_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = home_env / "cases" / "docs.jsonl"
    assert main(["eval", "make-cases", "--from-docs", str(docs), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {"out": str(out), "cases": 3, "sections": 3, "skipped": {}}
    assert [c.source for c in load_cases(out)] == ["docs"] * 3
    # No docs given and none configured: one clear line, exit 2.
    assert main(["eval", "make-cases", "--from-docs", "--out", str(out)]) == 2
    assert "no docs: give --from-docs PATH or set sources.docs_paths" in capsys.readouterr().err
    assert main(["eval", "make-cases", "--out", str(out)]) == 2
