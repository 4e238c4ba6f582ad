"""The preferences job: sampled candidates from the resident model, ranked by a scripted teacher."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from sam_brain.config import TeacherConfig
from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.pipeline.ingest import store_result
from sam_brain.pipeline.split import assign_split
from sam_brain.protocols import CollectResult, Sample
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.preferences import (
    RANK_SYSTEM,
    candidates_path,
    held_out_prompts,
    parse_scores,
)
from sam_brain.teach.runner import run_job
from teachers.openai_api import OpenAITeacher
from tests.scripted_openai import ScriptedServer, system_text, user_text

TOPICS = ["alpha", "bravo", "charlie", "delta", "echo"]
# What the teacher answers for each prompt's candidates (K = 3).
REPLIES = {
    "alpha": "Answer 1: 8\nAnswer 2: 3\nAnswer 3: 5",  # best 1, worst 2
    "bravo": "Answer 1: 6\nAnswer 2: 6\nAnswer 3: 6",  # a tie: no pair
    "charlie": "They all look fine to me.",  # no scores: unparseable
    "delta": "Answer 1: 2\nAnswer 2: 9\nAnswer 3: 5",  # best 2, worst 1
}


def script(body: dict[str, Any]) -> str:
    assert system_text(body) == RANK_SYSTEM
    request = user_text(body)
    return next(reply for topic, reply in REPLIES.items() if f"the {topic} service" in request)


class CountingModel:
    """The resident model, counting generations (a rerun must not make candidates again)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.generated = 0
        self.temperatures: set[float] = set()

    def use(self, adapter: str | None) -> float:
        return float(self.model.use(adapter))

    def generate(self, messages: list[Any], max_tokens: int, temperature: float = 0.0) -> Any:
        self.generated += 1
        self.temperatures.add(temperature)
        return self.model.generate(messages, max_tokens, temperature=temperature)


@pytest.fixture(scope="module")
def resident(tiny_model: Path) -> Any:
    from deployment.resident import ResidentModel

    return ResidentModel(tiny_model, prompt_cache_entries=0)


def make_home(tmp_path: Path) -> Home:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "home")}))
    samples, i = [], 0
    for topic in TOPICS:
        while assign_split(f"g{i}", "sessions", (0.9, 0.05, 0.05)) != "train":
            i += 1
        samples.append(
            Sample(
                id=f"s-{topic}",
                source="sessions",
                source_key=f"{topic}.jsonl",
                group=f"g{i}",
                messages=[
                    {"role": "user", "content": f"How do I restart the {topic} service safely?"},
                    {"role": "assistant", "content": f"Run the {topic} restart script with care."},
                ],
            )
        )
        i += 1
    assert store_result(home, "sessions", CollectResult(samples=samples)).stored == len(TOPICS)
    return home


def test_preferences_rank_candidates_into_pairs_and_resume(
    tmp_path: Path, resident: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = make_home(tmp_path)
    # The active version trained on "echo": that prompt is not held out.
    run_data = home.runs_dir / "r1" / "data"
    run_data.mkdir(parents=True)
    (run_data / "samples.json").write_text(json.dumps({"s-echo": "digest"}))
    active = SimpleNamespace(version="v1.0.0", run_id="r1", adapter_path=None)
    monkeypatch.setattr(home.versions, "current", lambda: active)
    assert [s.id for s, _ in held_out_prompts(home, 10)] == [f"s-{t}" for t in sorted(REPLIES)]

    model = CountingModel(resident)
    spec = JobSpec(kind="preferences", options={"k": 3, "temperature": 1.0, "max_tokens": 8})
    with ScriptedServer(script) as server:
        teacher = OpenAITeacher(
            TeacherConfig(provider="openai", model="judge", base_url=server.url, max_retries=0)
        )
        status = run_job(home, spec, teacher=teacher, exclusive=lambda fn: fn(model))
        assert status.state == "done", status.error
        assert len(server.calls) == 4 and model.generated == 12
        assert model.temperatures == {1.0}
        c = status.counts
        assert c["preference_pairs"] == 2 and c["tie"] == 1 and c["unparseable_reply"] == 1
        assert status.stored == 2

        cands = json.loads(candidates_path(home, status.job_id).read_text())
        pairs = {
            s.meta["original_id"]: s
            for s, _ in home.pool.samples(kind="preference")
            if s.source == "teacher"
        }
        assert set(pairs) == {"s-alpha", "s-delta"}
        alpha, delta = pairs["s-alpha"], pairs["s-delta"]
        distinct = {k: list(dict.fromkeys(a.strip() for a in v)) for k, v in cands.items()}
        assert (alpha.chosen, alpha.rejected) == (distinct["s-alpha"][0], distinct["s-alpha"][1])
        assert (delta.chosen, delta.rejected) == (distinct["s-delta"][1], distinct["s-delta"][0])
        assert alpha.messages == [
            {"role": "user", "content": "How do I restart the alpha service safely?"}
        ]
        assert alpha.meta["adapter_version"] == "v1.0.0" and alpha.meta["scores"] == [8, 3, 5]
        assert alpha.meta["teacher_model"] == "judge"

        # A rerun neither asks the teacher nor samples the model again.
        again = run_job(home, spec, teacher=teacher, exclusive=lambda fn: fn(model))
        assert again.state == "done" and len(server.calls) == 4 and model.generated == 12


def test_identical_candidates_are_skipped_without_asking(tmp_path: Path, resident: Any) -> None:
    home = make_home(tmp_path)
    model = CountingModel(resident)
    spec = JobSpec(
        kind="preferences", count=2, options={"k": 3, "temperature": 0.0, "max_tokens": 6}
    )
    with ScriptedServer(script) as server:
        teacher = OpenAITeacher(
            TeacherConfig(provider="openai", model="judge", base_url=server.url, max_retries=0)
        )
        status = run_job(home, spec, teacher=teacher, exclusive=lambda fn: fn(model))
        assert status.state == "done", status.error
        assert server.calls == [] and model.generated == 6  # greedy: three times the same answer
        assert status.counts["identical_candidates"] == 2
        again = run_job(home, spec, teacher=teacher, exclusive=lambda fn: fn(model))
        assert again.counts["identical_candidates"] == 2 and model.generated == 6


def test_parse_scores() -> None:
    assert parse_scores("Answer 1: 7\nAnswer 2 = 4.5", 2) == [7.0, 4.5]
    assert parse_scores("Answer 1: 7", 2) is None
    assert parse_scores("Answer 1: 70\nAnswer 2: 1", 2) is None
    assert parse_scores("answer 2: 1, answer 1: 3, answer 1: 9", 2) == [3.0, 1.0]
