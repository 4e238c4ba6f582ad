"""The OpenAI-compatible teacher end to end against SAM Brain's own `/v1/chat/completions`
serving the real pretrained model (SmolLM2-135M-Instruct), then `generate` through it.

A 135M model does not write valid examples of a CLI schema, so this checks the plumbing with a
real model on the wire: answers arrive, every answer is accounted for (stored or dropped by
reason), and the ledger holds exactly the tokens the server reported.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from deployment.serving import ChatServer, add_routes
from sam_brain.config import TeacherConfig
from sam_brain.config_load import parse_config
from sam_brain.dev.teacher_wire import serve_app
from sam_brain.home import Home
from sam_brain.protocols import TeacherRequest
from sam_brain.store import Store
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.progress import ProgressLog
from sam_brain.teach.runner import run_job
from sam_brain.teacher_ledger import Ledger, cost_usd
from sam_brain.versions import Versions
from teachers.openai_api import OpenAITeacher

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def chat_url(real_model: Path, tmp_path: Path) -> Iterator[str]:
    versions = Versions(Store(tmp_path / "serving" / "state.db"), tmp_path / "serving" / "v")
    server = ChatServer(versions, real_model, default_max_tokens=32)
    app = web.Application()
    add_routes(app, server)
    with serve_app(app) as url:
        yield url + "/v1"
    server.close()


def test_openai_teacher_asks_the_real_model(chat_url: str) -> None:
    cfg = TeacherConfig(provider="openai", model="base", base_url=chat_url, max_output_tokens=12)
    reply = OpenAITeacher(cfg).ask(
        TeacherRequest(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            system="Answer in one short sentence.",
            key="q1",
        )
    )
    assert reply.text.strip() and reply.model and reply.key == "q1"
    assert 0 < reply.output_tokens <= 12 and reply.input_tokens > 10


def test_generate_through_sam_brains_own_chat_endpoint(chat_url: str, tmp_path: Path) -> None:
    doc = {
        "data_dir": str(tmp_path / "home"),
        "teacher": {"provider": "openai", "model": "base", "base_url": chat_url,
                    "max_output_tokens": 48, "concurrency": 2},
    }  # fmt: skip
    home = Home.open(parse_config(doc))
    spec = JobSpec(kind="generate", source="samctl", count=6, options={"batch_size": 2})
    status = run_job(home, spec)
    assert status.state == "done", status.error
    assert (status.done, status.total) == (3, 3)
    # Every answer is accounted for: unparseable, empty, or parsed into examples counted by reason.
    c = status.counts
    assert c.get("invalid_json", 0) + c.get("empty_answer", 0) + c.get("parsed", 0) == 3
    assert status.stored == len(list(home.pool.samples()))
    # The ledger holds exactly what the server reported, priced.
    calls = Ledger(home.data / "state.db").calls(spec.job_id)
    paid = list(ProgressLog(home.data / "teach" / spec.job_id / "progress.jsonl").replies.values())
    assert len(calls) == len(paid) == 3
    assert sum(c["output_tokens"] for c in calls) == sum(r.output_tokens for r in paid) > 0
    assert sum(c["input_tokens"] for c in calls) == sum(r.input_tokens for r in paid) > 0
    assert sum(c["usd"] for c in calls) == pytest.approx(
        sum(cost_usd(home.config.teacher, r) for r in paid), rel=1e-12
    )
    home.close()
