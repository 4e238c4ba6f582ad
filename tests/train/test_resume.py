"""Runs continue after a cancel or a crash: same run id, same pinned dataset, same adapter.

Fast tests check the decisions (pinned pool version, why a run starts over, the memory fit,
runs/ pruning); slow ones train the tiny model for real through the coordinator and through a
daemon subprocess that is killed with SIGKILL together with its worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config import Profile
from sam_brain.config_load import load_config, parse_config
from sam_brain.dev.demo import free_port
from sam_brain.home import Home
from sam_brain.pool import file_lock
from sam_brain.protocols import TrainSpec
from sam_brain.train import resume
from sam_brain.train.dataset import SAMPLES, build_dataset
from sam_brain.train.job import TrainingJob
from sam_brain.train.runs import prune_runs
from sam_brain.train.scheduler import Coordinator
from sam_brain.train.supervisor import worker_env
from tests.api_auth import auth_headers
from tests.daemon_proc import spawn, wait
from tests.sources import COLOURS, fill

PROFILE = {
    "lora_rank": 4, "lora_alpha": 8.0, "num_layers": -1, "batch_size": 2, "grad_accum": 1,
    "max_seq_length": 64, "learning_rate": 5e-3, "max_steps": 24, "eval_every": 6,
    "save_every": 2,
}  # fmt: skip
GATE = {"gate_max_repetition": 1.0, "gate_min_terminated": 0.0, "gate_min_rows": 1}


def make_home(tmp: Path, model: str = "unused", **training: Any) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp / "data"),
            "sources": {"sessions_dirs": [str(tmp / "s")]},
            "training": {
                "mlx_base_model": model,
                "backend": "mlx",
                "min_for_training": 1000,
                "profile": "t",
                "memory_budget_mb": -1,
                **training,
            },
            "profiles": {"t": PROFILE},
            "deployment": {**GATE, "serve_chat": False},
        }
    )
    return Home.open(cfg)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_dataset_is_read_from_the_pool_version_the_run_records(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    fill(home, 0, 12)
    run = TrainingJob(home, "mlx", "forced").open_run()
    before = build_dataset(home, tmp_path / "before")
    fill(home, 12, 30)  # an ingest lands after the run was recorded
    assert home.pool.version > run.pool_version
    pinned = build_dataset(home, tmp_path / "pinned", pool_version=run.pool_version)
    latest = build_dataset(home, tmp_path / "latest")
    assert pinned == before and files(tmp_path / "pinned") == files(tmp_path / "before")
    assert len(json.loads((tmp_path / "pinned" / SAMPLES).read_text())) == 12
    assert sum(latest[k] for k in ("train", "val", "test")) == 30
    home.close()


def test_a_run_stopped_before_its_dataset_was_written_continues(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    fill(home, 0, 12)
    run = TrainingJob(home, "mlx", "threshold").open_run()
    assert resume.recover_interrupted(home)[0].run_id == run.run_id  # as at the next start
    assert home.store.get_run(run.run_id).status == "interrupted"
    fill(home, 12, 20)
    again = TrainingJob(home, "mlx", "threshold").open_run()
    assert (again.run_id, again.status) == (run.run_id, "pending")
    assert again.pool_version == run.pool_version < home.pool.version  # still pinned
    home.close()


async def test_a_run_continues_unless_config_or_its_samples_changed(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, str(tiny_model))
    fill(home, 0, 16)
    job = TrainingJob(home, "mlx", "forced")
    run = job.open_run()
    await job._prepare(run)  # resolves the base, writes the dataset and plan.json
    home.store.update_run(run.run_id, status="cancelled", reason="cancelled")
    plan = resume.read_plan(home.runs_dir / run.run_id)
    assert plan is not None and home.store.get_run(run.run_id).fingerprint == plan["fingerprint"]

    fill(home, 16, 24)  # new samples alone do not invalidate it: its dataset is pinned
    again = TrainingJob(home, "mlx", "forced").open_run()
    assert again.run_id == run.run_id and again.status == "pending"
    assert any(n.startswith("resumed from step 0 (cancelled") for n in again.notes)
    home.store.update_run(run.run_id, status="cancelled", reason="cancelled")
    home.close()

    changed = make_home(tmp_path, str(tiny_model), seed=7)
    fresh = TrainingJob(changed, "mlx", "forced").open_run()
    assert fresh.run_id != run.run_id
    why = f"started over instead of resuming run {run.run_id}: training config changed"
    assert any(n.startswith(why) and n.endswith("seed") for n in fresh.notes), fresh.notes
    assert "not resumed: training config changed" in changed.store.get_run(run.run_id).reason
    changed.close()

    # A sample it trained on was forgotten: the next run starts over and says so.
    home = make_home(tmp_path, str(tiny_model))
    job = TrainingJob(home, "mlx", "forced")
    await job._prepare(job.open_run())
    home.store.update_run(job.open_run().run_id, status="interrupted", reason="daemon stopped")
    pinned = len(json.loads((job.run_dir(job.open_run()) / "data" / SAMPLES).read_text()))
    with file_lock(home.pool.lock_path):
        home.pool.upsert([], replace_keys={"g1"})  # every row of one session removed
    fresh = TrainingJob(home, "mlx", "forced").open_run()
    assert fresh.run_id != job.open_run().run_id
    assert any(f"of the {pinned} samples it trains on were removed" in n for n in fresh.notes)
    assert home.store.get_run(job.open_run().run_id).status == "failed"
    home.close()


def test_memory_fit_halves_the_batch_then_reports(tmp_path: Path, tiny_model: Path) -> None:
    from backends.mlx import MLXBackend
    from sam_brain.train.worker import fit_memory, free_memory_mb

    data = tmp_path / "data"
    data.mkdir()
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"box {i}?"},
                {"role": "assistant", "content": c},
            ]
        }
        for i, c in enumerate(COLOURS * 2)
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "valid.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    profile = asdict(Profile(**{**PROFILE, "batch_size": 4}))  # type: ignore[arg-type]
    spec = TrainSpec("r", str(tiny_model), str(data), str(tmp_path / "out"), profile)
    backend = MLXBackend()
    at4 = backend.preflight(spec).estimated_memory_mb
    at2 = backend.preflight(replace(spec, profile={**profile, "batch_size": 2})).estimated_memory_mb
    assert at2 < at4

    same, _, notes = fit_memory(backend, spec, 0.0)  # no budget: untouched
    assert same.profile == profile and notes == []
    fitted, pre, notes = fit_memory(backend, spec, (at2 + at4) / 2)
    assert (fitted.profile["batch_size"], fitted.profile["grad_accum"]) == (2, 2)
    assert pre.estimated_memory_mb == at2 and len(notes) == 1 and "batch_size 2" in notes[0]
    assert 0 < free_memory_mb("mlx") < 1e9
    tiny, _, notes = fit_memory(backend, spec, 1.0)  # nothing fits: say so, train anyway
    assert tiny.profile["batch_size"] == 1 and "training anyway" in notes[-1]


def test_runs_folders_are_pruned_keeping_protected_ones(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import save_file

    home = make_home(tmp_path, keep_runs=2)
    ids = [home.store.create_run("forced", "mlx", "m", 1, 1).run_id for _ in range(6)]
    for run_id in ids:
        (home.runs_dir / run_id).mkdir(parents=True)
        home.store.update_run(run_id, status="completed")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"w": np.ones(2, dtype=np.float32)}, str(adapter / "adapters.safetensors"))
    (adapter / "adapter_config.json").write_text("{}")
    active = home.versions.register(adapter, run_id=ids[0])
    home.versions.activate(active.version)
    home.store.update_run(ids[5], status="interrupted")  # the newest: resumable

    pruned = prune_runs(home, home.config.training.keep_runs)

    assert sorted(pruned) == sorted(ids[1:4])
    assert sorted(p.name for p in home.runs_dir.iterdir()) == sorted([ids[0], ids[4], ids[5]])
    home.close()


def test_a_worker_left_running_is_stopped_before_the_run_continues(tmp_path: Path) -> None:
    from sam_brain.train.supervisor import stop_orphan

    assert stop_orphan(tmp_path) is None  # no lock file: nothing to stop
    code = (
        "import sys, time; from pathlib import Path;"
        "from sam_brain.train.supervisor import lock_worker;"
        "fh = lock_worker(Path(sys.argv[1])); print('locked', flush=True); time.sleep(120)"
    )
    orphan = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert orphan.stdout is not None and orphan.stdout.readline().strip() == "locked"
    assert stop_orphan(tmp_path, grace_s=10.0) == orphan.pid
    assert orphan.wait(timeout=10) == -signal.SIGTERM
    assert stop_orphan(tmp_path) is None  # released: the next worker takes it at once


async def test_a_run_resumed_after_its_release_is_not_registered_twice(tmp_path: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    from sam_brain.protocols import TrainResult

    home = make_home(tmp_path)
    fill(home, 0, 8)
    job = TrainingJob(home, "mlx", "forced")
    run = job.open_run()
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    save_file({"w": np.ones(2, dtype=np.float32)}, str(adapter / "adapters.safetensors"))
    (adapter / "adapter_config.json").write_text("{}")
    version = home.versions.register(adapter, run_id=run.run_id)
    assert load_file(str(home.versions.path(version.version) / "adapters.safetensors"))

    result = TrainResult(adapter_dir=str(adapter), steps=4, metrics={"best_val_loss": 1.0})
    metrics = await job._release(run, tmp_path, {"train": 8}, result)

    assert metrics["release"] == {"version": version.version, "action": "already released"}
    assert [v.version for v in home.store.versions()] == [version.version]
    home.close()


async def wait_for(check: Any, timeout: float = 300.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def wait_for_async(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


def checkpoint_step(run_dir: Path) -> int:
    return resume.checkpoint_step(run_dir)


def reference_adapter(run_dir: Path, out: Path) -> Path:
    """The same spec (data, fitted profile, seed) trained without interruption into `out`."""
    spec = TrainSpec.from_json((run_dir / "spec.json").read_text())
    out.mkdir(parents=True)
    path = out / "spec.json"
    path.write_text(replace(spec, out_dir=str(out / "adapter")).to_json())
    subprocess.run(
        [sys.executable, "-m", "sam_brain.train.worker", "mlx", str(path)],
        env=worker_env("mlx"),
        check=True,
        capture_output=True,
        timeout=600,
    )
    return out / "adapter"


def assert_same_adapter(a: Path, b: Path) -> None:
    """Within the tolerance the backend's own resume test holds (tests/backends/test_mlx.py)."""
    import numpy as np
    from safetensors.numpy import load_file

    for name in ("adapters.safetensors",):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert set(wa) == set(wb) and wa
        for key in wa:
            np.testing.assert_allclose(wa[key], wb[key], atol=1e-5, err_msg=key)


@pytest.mark.slow
async def test_cancel_then_force_continues_and_a_forced_run_joins(
    tmp_path: Path, tiny_model: Path
) -> None:
    # A budget nothing fits: the batch is halved before the run and kept when it resumes.
    home = make_home(tmp_path, str(tiny_model), min_for_training=8, memory_budget_mb=1)
    fill(home, 0, 24)
    coord = Coordinator(home, "mlx")
    await coord.check()  # the threshold is met: an automatic run starts
    assert coord.job is not None and coord.job.run is not None
    auto = coord.job.run.run_id
    assert await coord.start_run("forced", force=True) == (auto, True)  # joins it
    run_dir = home.runs_dir / auto
    await wait_for(lambda: checkpoint_step(run_dir) >= 4)
    assert await coord.cancel()
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 120)
    cancelled = home.store.get_run(auto)
    assert cancelled.status == "cancelled"
    # The threshold is still met, but automatic runs wait for the user after a cancel.
    assert "was cancelled (0 new samples since, 8 needed" in (coord.why_not() or "")
    step = checkpoint_step(run_dir)
    assert 4 <= step < 24

    assert await coord.start_run("forced", force=True) == (auto, False)  # the same run again
    await asyncio.wait_for(coord.task, 600)
    run = home.store.get_run(auto)
    assert run.status == "completed", run.reason
    assert [r.run_id for r in home.store.runs()] == [auto]
    assert any(n.startswith(f"resumed from step {step} (cancelled") for n in run.notes)
    assert any("batch_size 1, grad_accum 2" in n for n in run.notes), run.notes
    assert any(f"resumed from step {step}" in n for n in run.notes if n.startswith("trainer:"))
    assert_same_adapter(run_dir / "adapter", reference_adapter(run_dir, tmp_path / "ref"))
    home.close()


@pytest.mark.slow
async def test_a_killed_worker_is_retried_from_its_checkpoint(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, str(tiny_model), max_retries=1, retry_backoff_seconds=0.1)
    fill(home, 0, 24)
    coord = Coordinator(home, "mlx")
    run_id, _ = await coord.start_run("forced", force=True)
    run_dir = home.runs_dir / run_id
    await wait_for(lambda: checkpoint_step(run_dir) >= 4)
    os.kill(int((run_dir / "worker.lock").read_text()), signal.SIGKILL)  # as the OOM killer
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 60)
    killed = home.store.get_run(run_id)
    assert killed.status == "interrupted" and "killed by signal 9" in killed.reason
    step = checkpoint_step(run_dir)

    async def retried() -> bool:
        await coord.check()  # the retry waits out its backoff, then continues the same run
        return coord.training

    await wait_for_async(retried)
    await asyncio.wait_for(coord.task, 600)
    run = home.store.get_run(run_id)
    assert run.status == "completed" and run.attempt == 2, run.reason
    assert [r.run_id for r in home.store.runs()] == [run_id]
    assert any(n.startswith(f"resumed from step {step} (interrupted") for n in run.notes)
    home.close()


@pytest.mark.slow
async def test_a_daemon_stop_interrupts_and_the_next_start_continues(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, str(tiny_model), check_interval_seconds=0.2)
    fill(home, 0, 24)
    coord = Coordinator(home, "mlx")
    run_id, _ = await coord.start_run("forced", force=True)
    run_dir = home.runs_dir / run_id
    await wait_for(lambda: checkpoint_step(run_dir) >= 2)
    await coord.stop()  # SIGTERM of the daemon
    stopped = home.store.get_run(run_id)
    step = checkpoint_step(run_dir)
    assert stopped.status == "interrupted" and f"checkpoint at step {step}" in stopped.reason

    again = Coordinator(home, "mlx")  # the next start: no threshold needed, same run
    assert again.why_not() is None
    await again.check()
    assert again.job is not None and again.job.run is not None
    assert again.job.run.run_id == run_id
    assert any(n.startswith(f"resumed from step {step} (interrupted") for n in again.job.run.notes)
    await again.stop()
    home.close()


def daemon_config(home: Path, model: Path, port: int) -> None:
    profile = "\n".join(f"{k} = {json.dumps(v)}" for k, v in PROFILE.items())
    (home / "config.toml").write_text(f"""
data_dir = "{home}"
[api]
port = {port}
[sources]
sessions_dirs = ["{home / "no-sessions"}"]
[training]
backend = "mlx"
mlx_base_model = "{model}"
min_for_training = 1000
profile = "t"
check_interval_seconds = 1.0
memory_budget_mb = -1
[deployment]
serve_chat = false
gate_max_repetition = 1.0
gate_min_terminated = 0.0
gate_min_rows = 1
[profiles.t]
{profile}
""")


def http(url: str, body: dict[str, Any] | None = None, data: Path | None = None) -> Any:
    """GET, or POST `body` with the control token of the home whose data directory is `data`."""
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if data is not None:
        headers.update(auth_headers(data))
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [3, 10])
def test_kill_9_of_daemon_and_worker_then_restart_continues_the_run(
    tmp_path: Path, tiny_model: Path, kill_at: int
) -> None:
    home_dir = tmp_path / "home"
    home_dir.mkdir()
    port = free_port()
    daemon_config(home_dir, tiny_model, port)
    env = dict(os.environ, SAM_BRAIN_HOME=str(home_dir), HF_HUB_OFFLINE="1")
    home = Home.open(load_config(home_dir / "config.toml"))
    fill(home, 0, 24)
    data = home.data
    home.close()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "daemon.log"

    proc = spawn(env, log)
    try:
        wait(lambda: http(url + "/api/health")["ok"], 120, proc, log, poll=0.05)
        run_id = http(url + "/api/train", {"force": True}, data)["run_id"]
        run_dir = home_dir / "runs" / run_id
        wait(lambda: checkpoint_step(run_dir) >= kill_at, 300, proc, log, poll=0.05)
        worker = int((run_dir / "worker.lock").read_text())
        os.kill(worker, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = checkpoint_step(run_dir)
    assert kill_at <= step < 24
    data_before = files(run_dir / "data")
    home = Home.open(load_config(home_dir / "config.toml"))
    fill(home, 24, 40)  # an ingest lands while the daemon is down: the run's dataset is pinned
    home.close()

    proc = spawn(env, log)
    try:
        wait(lambda: http(url + "/api/health")["ok"], 120, proc, log, poll=0.05)
        # A forced run asked for now joins (or is) the resumed run: exit 0 once it finishes.
        cli = subprocess.run(
            [sys.executable, "-m", "sam_brain.control.cli", "train", "--force", "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert cli.returncode == 0, cli.stdout + cli.stderr + log.read_text()[-3000:]
        assert run_id in cli.stdout
        doc = http(url + "/api/training")
        status = subprocess.run(
            [sys.executable, "-m", "sam_brain.control.cli", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    runs = doc["runs"]
    assert [r["run_id"] for r in runs] == [run_id], runs
    run = runs[0]
    assert run["status"] == "completed", run
    assert any(n.startswith(f"resumed from step {step} (interrupted") for n in run["notes"])
    assert f"resumed from step {step}" in status
    assert files(run_dir / "data") == data_before
    assert_same_adapter(run_dir / "adapter", reference_adapter(run_dir, tmp_path / "ref"))
