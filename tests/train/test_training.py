"""Training orchestration: failures are recorded and never deployed; the scheduler's rules."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.errors import TrainingFailed
from sam_brain.home import Home
from sam_brain.pool import file_lock
from sam_brain.protocols import Sample, stable_id
from sam_brain.train.dataset import build_dataset
from sam_brain.train.job import TrainingJob
from sam_brain.train.scheduler import Coordinator


def make_home(tmp_path: Path, model: str, **training: Any) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "s")]},
            "training": {"mlx_base_model": model, "min_for_training": 5, **training},
        }
    )
    return Home.open(cfg)


def fill(home: Home, n: int, groups: int = 4) -> None:
    rows = []
    for i in range(n):
        g = f"g{i % groups}"
        rows.append(
            (
                Sample(
                    id=stable_id("t", str(i)),
                    source="sessions",
                    source_key=g,
                    group=g,
                    messages=[
                        {"role": "user", "content": f"question {i}"},
                        {"role": "assistant", "content": f"answer number {i}"},
                    ],
                ),
                "train",
            )
        )
    with file_lock(home.pool.lock_path):
        home.pool.upsert(rows)


def test_dataset_always_has_validation(tmp_path: Path) -> None:
    home = make_home(tmp_path, "unused")
    fill(home, 12, groups=3)
    counts = build_dataset(home, tmp_path / "ds")
    assert counts["val"] > 0 and counts["train"] > 0
    assert counts["train"] + counts["val"] + counts["test"] == 12
    home.close()


@pytest.mark.slow
def test_failed_run_is_recorded_and_not_deployed(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    home = make_home(tmp_path, str(broken))
    fill(home, 8)
    job = TrainingJob(home, "mlx", "forced")
    with pytest.raises(TrainingFailed):
        asyncio.run(job.execute())
    run = home.store.last_run()
    assert run is not None and run.status == "failed" and run.reason
    assert home.store.versions() == []
    assert (home.runs_dir / run.run_id / "train.log").exists()
    home.close()


def test_scheduler_rules(tmp_path: Path) -> None:
    home = make_home(tmp_path, "unused", nightly_window="01:00-05:00", max_runs_per_day=1)
    coord = Coordinator(home, "mlx")
    assert "needed" in (coord.why_not() or "")
    fill(home, 6)
    assert "window" in (coord.why_not(datetime(2026, 1, 1, 12, 0)) or "")
    assert coord.why_not(datetime(2026, 1, 1, 2, 0)) is None
    home.store.create_run("threshold", "mlx", "m", 6, 1)
    assert "cap" in (coord.why_not(datetime(2026, 1, 1, 2, 0)) or "")
    home.close()


async def test_shutdown_cancels_a_running_job_without_logging_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A periodic job still running at shutdown ends quietly: no apscheduler error traceback."""
    import asyncio
    import logging

    home = make_home(tmp_path, "unused", check_interval_seconds=0.05)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow_collect() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    coord = Coordinator(home, "mlx", collect=slow_collect)
    caplog.set_level(logging.DEBUG)
    coord.start()
    await asyncio.wait_for(started.wait(), 10)
    await coord.stop()
    await asyncio.wait_for(cancelled.wait(), 10)
    await asyncio.sleep(0.1)  # let the executor's done-callbacks run
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("cancelled by shutdown" in r.getMessage() for r in caplog.records)
    home.close()


@pytest.mark.slow
async def test_a_user_cancel_is_recorded_as_cancelled_and_not_retried(
    tmp_path: Path, tiny_model: Path
) -> None:
    slow = {
        "lora_rank": 2, "lora_keys": ["self_attn.q_proj"], "batch_size": 1, "grad_accum": 1,
        "max_seq_length": 64, "epochs": 500.0, "eval_every": 10_000, "save_every": 10_000,
    }  # fmt: skip
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "s")]},
            "training": {"mlx_base_model": str(tiny_model), "profile": "slow", "max_retries": 3},
            "profiles": {"slow": slow},
        }
    )
    home = Home.open(cfg)
    fill(home, 8)
    coord = Coordinator(home, "mlx")
    run_id, joined = await coord.start_run("forced", force=True)
    assert not joined
    assert home.store.get_run(run_id).status == "pending"  # recorded before the task runs
    for _ in range(600):  # the worker is up once it reports progress
        if home.store.get_run(run_id).progress.get("step"):
            break
        await asyncio.sleep(0.1)
    assert await coord.cancel()
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 120)
    run = home.store.get_run(run_id)
    assert (run.status, run.reason) == ("cancelled", "cancelled")
    assert coord.retry_at is None and not coord.training  # a cancel is never retried
    assert home.store.versions() == []
    home.close()
