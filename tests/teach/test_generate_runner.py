"""`generate` through the runner: exact counts, the ledger, the daily budget, resume, batches, the
key never on disk. The teacher is the real `anthropic` SDK against a local wire-format server."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.teacher_wire import Wire, serve
from sam_brain.protocols import TeacherReply
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.progress import ProgressLog
from sam_brain.teach.runner import run_job
from sam_brain.teacher_ledger import Ledger, cost_usd
from tests.teach.scripted import answer, open_home, per_request

KEY = "sk-ant-test-Qw8ErT5yU2iO9pA3sD6fG1hJ4kL7zX0c"
SPEC = JobSpec(kind="generate", source="samctl", count=40, training="samctl",
               options={"batch_size": 5})  # fmt: skip
REQUESTS = 8


def fixed_clock(day: int = 0) -> Any:
    return lambda: datetime(2026, 3, 1, 12, tzinfo=UTC) + timedelta(days=day)


def ledger_of(root: Path) -> Ledger:
    return Ledger(root / "home" / "state.db")


def replies(root: Path) -> list[TeacherReply]:
    log = ProgressLog(root / "home" / "teach" / SPEC.job_id / "progress.jsonl")
    return list(log.replies.values())


def assert_no_key_on_disk(root: Path) -> None:
    for path in (root / "home").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def test_generate_exact_counts_ledger_and_pool(
    tmp_path: Path, env: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's and httpx's debug logs too
    with serve(Wire(answer, key=KEY, script=["429", "overloaded"])) as wire:
        home = open_home(tmp_path, base_url=wire.url, concurrency=3, model="claude-test")
        status = run_job(home, SPEC, clock=fixed_clock())
    assert status.state == "done", status.error
    assert (status.done, status.total) == (REQUESTS, REQUESTS)
    expected = per_request(REQUESTS)
    assert {k: status.counts[k] for k in expected} == expected
    assert status.stored == expected["valid"] == 14
    assert wire.answered == REQUESTS and wire.failures == ["429", "overloaded"]
    # The pool holds exactly the valid examples, as teacher samples of the schema and training.
    rows = [s for s, _ in home.pool.samples()]
    assert len(rows) == 14 and {s.source for s in rows} == {"teacher"}
    assert {s.meta["schema"] for s in rows} == {"samctl"}
    assert {s.meta["training"] for s in rows} == {"samctl"}
    assert all(s.messages[-1]["content"].startswith("{") for s in rows)
    # One ledger row per paid answer; the sum is exactly the priced usage.
    ledger = ledger_of(tmp_path)
    calls = ledger.calls(SPEC.job_id)
    assert len(calls) == REQUESTS
    paid = replies(tmp_path)
    want = sum(cost_usd(home.config.teacher, r) for r in paid)
    assert ledger.totals("job")[SPEC.job_id].usd == pytest.approx(want, rel=1e-12)
    assert status.usd == pytest.approx(want, rel=1e-12)
    # Prompt caching: one cache write, then reads (the system prompt is shared by all).
    assert sum(c["cache_write_tokens"] > 0 for c in calls) >= 1
    assert sum(c["cache_read_tokens"] > 0 for c in calls) >= REQUESTS - 3
    assert_no_key_on_disk(tmp_path)
    assert "Request options" in caplog.text and KEY not in caplog.text


def test_budget_stop_then_resume_next_day_pays_once(tmp_path: Path, env: None) -> None:
    with serve(Wire(answer, key=KEY)) as wire:
        home = open_home(tmp_path, base_url=wire.url, concurrency=1, model="claude-test")
        one = run_job(home, SPEC, clock=fixed_clock())  # learn what one full run costs
        full_cost = one.usd
    # A second home with a cap of about a third of that: the job stops, then resumes tomorrow.
    root = tmp_path / "capped"
    with serve(Wire(answer, key=KEY)) as wire:
        cap = full_cost / 3
        home = open_home(root, base_url=wire.url, concurrency=1, model="claude-test",
                         max_usd_per_day=cap)  # fmt: skip
        first = run_job(home, SPEC, clock=fixed_clock(0))
        assert first.state == "budget" and "resumes tomorrow" in first.error
        day0 = ledger_of(root).spent("2026-03-01")
        assert day0 >= cap and 0 < first.done < REQUESTS
        asked_day0 = wire.answered
        assert len(ledger_of(root).calls()) == asked_day0
        again = run_job(home, SPEC, clock=fixed_clock(0))  # same day: refuses at once
        assert again.state == "budget" and wire.answered == asked_day0
        days = 1
        status = run_job(home, SPEC, clock=fixed_clock(days))
        while status.state == "budget":
            days += 1
            status = run_job(home, SPEC, clock=fixed_clock(days))
        assert status.state == "done", status.error
    # Every request paid exactly once over the days, and the result equals the uncapped run's.
    calls = ledger_of(root).calls(SPEC.job_id)
    assert wire.answered == REQUESTS == len(calls)
    assert sorted(c["request_key"] for c in calls) == [f"b{i:05d}" for i in range(REQUESTS)]
    assert ledger_of(root).totals("job")[SPEC.job_id].usd == pytest.approx(full_cost, rel=1e-12)
    assert status.stored == 14 and status.counts == one.counts
    assert len(ledger_of(root).totals("day")) == days + 1
    assert_no_key_on_disk(root)


def test_crash_after_paying_replays_without_asking_again(tmp_path: Path, env: None) -> None:
    from sam_brain.teach import generate

    real = generate.outcome
    seen: list[str] = []

    def crashing(*args: Any) -> Any:
        seen.append(args[3].key)
        if len(seen) == 5:
            raise RuntimeError("simulated crash while handling a reply")
        return real(*args)

    with serve(Wire(answer, key=KEY)) as wire:
        home = open_home(tmp_path, base_url=wire.url, concurrency=1, model="claude-test")
        generate.outcome = crashing  # type: ignore[assignment]
        try:
            crashed = run_job(home, SPEC, clock=fixed_clock())
        finally:
            generate.outcome = real  # type: ignore[assignment]
        assert crashed.state == "failed" and "simulated crash" in crashed.error
        assert wire.answered == 5  # the fifth answer was paid, then the handler died
        status = run_job(home, SPEC, clock=fixed_clock())
    assert status.state == "done" and wire.answered == REQUESTS
    assert len(ledger_of(tmp_path).calls()) == REQUESTS
    assert status.stored == 14 and len(list(home.pool.samples())) == 14


def test_batches_api_for_large_campaigns_at_half_price(tmp_path: Path, env: None) -> None:
    with serve(Wire(answer, key=KEY)) as wire:
        home = open_home(tmp_path, base_url=wire.url, model="claude-test",
                         batch_min_requests=4, batch_poll_seconds=0.01)  # fmt: skip
        status = run_job(home, SPEC, clock=fixed_clock())
    assert status.state == "done", status.error
    assert wire.answered == 0 and len(wire.batches) == 1  # no single calls: one batch
    assert status.stored == 14
    calls = ledger_of(tmp_path).calls()
    assert len(calls) == REQUESTS and all(c["batch"] == 1 for c in calls)
    want = sum(cost_usd(home.config.teacher, r) for r in replies(tmp_path)) / 2
    assert ledger_of(tmp_path).totals("job")[SPEC.job_id].usd == pytest.approx(want, rel=1e-12)


def test_cancel_keeps_progress(tmp_path: Path, env: None) -> None:
    cancel = threading.Event()
    calls = 0

    def cancelling(body: dict[str, Any]) -> str:
        nonlocal calls
        calls += 1
        if calls == 3:
            cancel.set()
        return answer(body)

    with serve(Wire(cancelling, key=KEY)) as wire:
        home = open_home(tmp_path, base_url=wire.url, concurrency=1, model="claude-test")
        stopped = run_job(home, SPEC, cancel=cancel, clock=fixed_clock())
        assert stopped.state == "cancelled" and stopped.done == 3
        status = run_job(home, SPEC, clock=fixed_clock())
    assert status.state == "done" and wire.answered == REQUESTS


def test_missing_key_fails_the_job_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    home = open_home(tmp_path, base_url="http://127.0.0.1:9")
    status = run_job(home, SPEC)
    assert status.state == "failed" and status.error.endswith("$ANTHROPIC_API_KEY")


def test_a_stopped_batch_is_polled_again_not_resubmitted(tmp_path: Path, env: None) -> None:
    cancel = threading.Event()
    wire = Wire(answer, key=KEY)
    submit = wire.create_batch

    async def submit_then_stop(request: Any) -> Any:
        response = await submit(request)
        cancel.set()  # the daemon stops while the batch is being processed
        return response

    wire.create_batch = submit_then_stop  # type: ignore[method-assign]
    with serve(wire):
        home = open_home(tmp_path, base_url=wire.url, model="claude-test",
                         batch_min_requests=4, batch_poll_seconds=0.01)  # fmt: skip
        stopped = run_job(home, SPEC, cancel=cancel, clock=fixed_clock())
        assert stopped.state == "cancelled" and len(wire.batches) == 1
        assert ledger_of(tmp_path).calls() == []  # nothing billed before the results are read
        status = run_job(home, SPEC, clock=fixed_clock())
    assert status.state == "done" and status.stored == 14
    assert len(wire.batches) == 1  # the same batch, read once
    assert len(ledger_of(tmp_path).calls()) == REQUESTS
