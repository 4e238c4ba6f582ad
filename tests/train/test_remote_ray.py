"""Remote training through a real local Ray cluster (head + a worker node), on the CPU.

The cluster is started once for the module (`ray.cluster_utils.Cluster`, 100 MB object stores,
the dashboard for Ray Jobs). A forced run of the tiny model with the torch backend is submitted
as a job through the daemon's coordinator, cancelled after its first checkpoint, resumed,
stopped with the daemon, continued by the next start, and must end with the adapter an
uninterrupted local worker trains from the same spec; DDP under Ray Train with two gloo workers
must give the adapter of one process; a follower that loses the job reattaches to it; a past
timeout stops the job; a wrong address fails in one line (or trains locally with the
fallback); and the job's environment carries none of the daemon's credentials.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.errors import TrainingFailed
from sam_brain.home import Home
from sam_brain.protocols import Progress, TrainSpec
from sam_brain.train import resume
from sam_brain.train.remote import RemoteRun, RemoteUnreachable, pack, runtime_env
from sam_brain.train.scheduler import Coordinator
from tests.sources import COLOURS, fill

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PROFILE = {
    "lora_rank": 4, "lora_alpha": 8.0, "num_layers": -1, "batch_size": 2, "grad_accum": 2,
    "max_seq_length": 64, "learning_rate": 5e-3, "max_steps": 16, "eval_every": 4,
    "save_every": 2, "grad_checkpoint": False,
}  # fmt: skip
GATE = {"gate_max_repetition": 1.0, "gate_min_terminated": 0.0, "gate_min_rows": 1}
WRONG = "http://127.0.0.1:9"  # discard port: nothing answers


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The Ray Jobs address of a head node plus one worker node, started for this module."""
    pytest.importorskip("ray", reason="Ray is not installed (the `remote` extra)")
    from ray.cluster_utils import Cluster

    # Jobs run `python -m ...` from the raylet's PATH: on a real cluster that is the cluster's own
    # environment; here it must be this venv's (make runs .venv/bin/python without activating it).
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{path}"
    started = time.monotonic()
    try:
        c = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 2,
                "object_store_memory": 100 * 1024 * 1024,
                "include_dashboard": True,  # Ray Jobs is served by the dashboard
                "dashboard_port": 0,
            },
        )
        c.add_node(num_cpus=1, object_store_memory=100 * 1024 * 1024)
    except Exception as err:
        os.environ["PATH"] = path
        pytest.skip(f"Ray cannot start a local cluster here: {type(err).__name__}: {err}")
    url = f"http://{c.webui_url}"
    print(f"ray cluster up in {time.monotonic() - started:.1f}s at {url}")
    try:
        yield url
    finally:
        c.shutdown()  # type: ignore[no-untyped-call]
        os.environ["PATH"] = path


def make_home(tmp: Path, model: Path, steps: int = 16, **training: Any) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp / "home"),
            "sources": {"sessions_dirs": [str(tmp / "s")]},
            "training": {
                "backend": "cuda",
                "cuda_base_model": str(model),
                "min_for_training": 1000,
                "profile": "t",
                "memory_budget_mb": -1,
                "remote_storage": str(tmp / "cluster-storage"),
                **training,
            },
            "profiles": {"t": {**PROFILE, "max_steps": steps}},
            "deployment": {**GATE, "serve_chat": False, "gate_prompts": 1},
        }
    )
    home = Home.open(cfg)
    fill(home, 0, 32)
    return home


STEPS = 60  # the cancel/resume run's length


async def wait_for(check: Any, timeout: float = 240.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def local_adapter(spec_file: Path, out: Path) -> Path:
    """The spec in `spec_file` trained by a local worker subprocess, uninterrupted, into `out`."""
    await wait_for(spec_file.exists)
    spec = TrainSpec.from_json(spec_file.read_text())
    out.mkdir(parents=True)
    path = out / "spec.json"
    path.write_text(replace(spec, out_dir=str(out / "adapter")).to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sam_brain.train.worker", "cuda", str(path),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out / "adapter"


def assert_same_adapter(a: Path, b: Path, atol: float = 1e-5) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    wa, wb = load_file(str(a / "adapters.safetensors")), load_file(str(b / "adapters.safetensors"))
    assert set(wa) == set(wb) and wa
    for key in wa:
        np.testing.assert_allclose(wa[key], wb[key], atol=atol, err_msg=key)
    assert any(np.abs(w).max() > 1e-4 for k, w in wa.items() if "lora_b" in k.lower())


async def test_a_remote_run_streams_is_cancelled_resumes_and_returns_the_local_adapter(
    cluster: str, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # allow-listed: the job trains on one thread
    # Long enough that a cancel or a stop lands mid-run even when Ray takes seconds to deliver
    # it (at 24 steps a loaded full run once finished before the cancel arrived).
    home = make_home(tmp_path, tiny_model, steps=STEPS, remote=cluster)
    coord = Coordinator(home, "cuda")
    run_id, _ = await coord.start_run("forced", force=True)
    remote_dir = tmp_path / "cluster-storage" / run_id
    # The same spec trained locally without interruption, while the remote run goes on.
    reference = asyncio.ensure_future(
        local_adapter(home.runs_dir / run_id / "spec.json", tmp_path / "local")
    )
    # Progress streams back from the job's log into the run record, as from a local worker.
    await wait_for(lambda: (home.store.get_run(run_id).progress or {}).get("step", 0) >= 1)
    await wait_for(lambda: resume.checkpoint_step(remote_dir) >= 2)
    assert await coord.cancel()  # `samctl train --cancel`: the job stops and checkpoints
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 120)
    cancelled = home.store.get_run(run_id)
    assert cancelled.status == "cancelled", cancelled.reason
    step = resume.checkpoint_step(remote_dir)
    assert 2 <= step < STEPS and resume.checkpoint_step(home.runs_dir / run_id) == step
    assert f"checkpoint at step {step}" not in cancelled.reason  # a cancel is not interrupted
    assert not (home.runs_dir / run_id / "adapter" / "adapters.safetensors").exists()

    assert await coord.start_run("forced", force=True) == (run_id, False)  # the same run
    await wait_for(lambda: resume.checkpoint_step(remote_dir) >= step + 2)
    await coord.stop()  # the daemon stops: so does the job, after its checkpoint
    stopped = home.store.get_run(run_id)
    assert stopped.status == "interrupted" and "daemon stopped" in stopped.reason
    again = step, resume.checkpoint_step(remote_dir)
    assert step + 2 <= again[1] < STEPS

    coord = Coordinator(home, "cuda")  # the next start continues it on the cluster
    await coord.check()
    assert coord.job is not None and coord.job.run is not None and coord.task is not None
    assert coord.job.run.run_id == run_id
    await asyncio.wait_for(coord.task, 400)
    run = home.store.get_run(run_id)
    assert run.status == "completed", run.reason
    notes = " | ".join(run.notes)
    assert f"resumed from step {step} (cancelled" in notes  # the step the job reported
    assert "(interrupted: daemon stopped" in notes and "trained on the Ray cluster" in notes
    assert f"; resumed from step {again[1]};" in notes  # the trainer, from the last checkpoint
    with home.store.tx() as db:
        points = db.execute("SELECT COUNT(*) FROM loss_points WHERE run_id=?", (run_id,)).fetchone()
    assert points[0] == STEPS  # every step's loss, from the three jobs, as a local run records
    assert run.metrics["release"]["version"]  # the gate ran locally on the returned adapter
    jobs = json.loads((home.runs_dir / run_id / "remote.json").read_text())
    assert jobs["address"] == cluster and jobs["job_id"].startswith(f"sam-brain-{run_id}-")

    assert_same_adapter(home.runs_dir / run_id / "adapter", await reference)
    home.close()


def _spec(tmp: Path, model: Path, name: str) -> TrainSpec:
    data = tmp / "data"
    if not data.exists():
        data.mkdir()
        talks = [
            {"messages": [
                {"role": "user", "content": f"What colour is box {i}?"},
                {"role": "assistant", "content": f"Box {i} is {COLOURS[i % 8]}." + " Yes." * (i % 3)},
            ]}
            for i in range(24)
        ]  # fmt: skip
        (data / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in talks[:20]))
        (data / "valid.jsonl").write_text("".join(json.dumps(t) + "\n" for t in talks[20:]))
    profile = {**PROFILE, "max_steps": 4, "lora_dropout": 0.0}
    return TrainSpec(name, str(model), str(data), str(tmp / name / "adapter"), profile, seed=3)


async def test_ddp_under_ray_train_gives_the_adapter_of_one_process_and_reattaches(
    cluster: str, tmp_path: Path, tiny_model: Path
) -> None:
    from backends.cuda import CudaBackend

    cfg = parse_config(
        {
            "training": {
                "backend": "cuda",
                "remote": cluster,
                "remote_storage": str(tmp_path / "cluster-storage"),
                "remote_resources": {"workers": 2, "cpus_per_worker": 1.0},
            }
        }
    ).training
    spec = _spec(tmp_path, tiny_model, "ddp")
    run_dir = tmp_path / "ddp"
    run_dir.mkdir()
    first = RemoteRun(cfg, "cuda", spec, run_dir)
    seen: list[Progress] = []
    # The daemon dies (or loses the cluster) while the job runs: the job runs on.
    follower = asyncio.ensure_future(first._run(seen.append, None))
    one = replace(spec, out_dir=str(tmp_path / "one"))  # one process, meanwhile
    train_one = asyncio.to_thread(
        CudaBackend(quantize=False).train, one, lambda p: None, lambda: False
    )
    single_task = asyncio.ensure_future(train_one)
    await wait_for(lambda: first.job_id, 120)
    await asyncio.sleep(1.0)
    follower.cancel()
    with pytest.raises(asyncio.CancelledError):
        await follower

    again = RemoteRun(cfg, "cuda", spec, run_dir)  # the resumed run finds the job again
    progress: list[Progress] = []
    result = await asyncio.wait_for(again.run(progress.append), 400)
    assert again.reattached and again.job_id == first.job_id
    assert {1, 2, 3, 4} <= {p.step for p in progress}  # the log replays from its start
    assert "2 processes share each step; rank 0 writes the files" in result.notes
    manifest = json.loads((run_dir / "adapter" / "manifest.json").read_text())
    assert manifest["processes"] == 2

    single = await single_task
    assert result.metrics["tokens"] == single.metrics["tokens"]
    assert_same_adapter(run_dir / "adapter", Path(single.adapter_dir), atol=1e-5)


async def test_a_wrong_address_fails_in_one_line_or_falls_back_to_local(
    tmp_path: Path, tiny_model: Path
) -> None:
    pytest.importorskip("ray", reason="Ray is not installed (the `remote` extra)")
    cfg = parse_config({"training": {"backend": "cuda", "remote": WRONG}}).training
    spec = _spec(tmp_path, tiny_model, "wrong")
    with pytest.raises(RemoteUnreachable) as err:
        await RemoteRun(cfg, "cuda", spec, tmp_path / "wrong").run(lambda p: None)
    assert str(err.value).startswith(f"Ray cluster at {WRONG} is unreachable")
    assert "\n" not in str(err.value)

    home = make_home(tmp_path, tiny_model, steps=4, remote=WRONG, remote_fallback="local")
    coord = Coordinator(home, "cuda")
    run_id, _ = await coord.start_run("forced", force=True)
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 400)
    run = home.store.get_run(run_id)
    assert run.status == "completed", run.reason
    assert any(
        n.startswith(f"remote: Ray cluster at {WRONG} is unreachable") and "trained locally" in n
        for n in run.notes
    ), run.notes
    assert not any("trained on the Ray cluster" in n for n in run.notes)
    home.close()

    home = make_home(tmp_path / "nofallback", tiny_model, remote=WRONG)
    coord = Coordinator(home, "cuda")
    run_id, _ = await coord.start_run("forced", force=True)
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 60)
    failed = home.store.get_run(run_id)
    assert failed.status == "failed" and failed.reason.startswith(f"Ray cluster at {WRONG}")
    home.close()


def test_the_job_sees_no_credential_of_the_daemon(
    cluster: str, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-fake-daemon-secret")
    monkeypatch.setenv("HF_TOKEN", "hf_fakeDaemonSecret")
    cfg = parse_config({"training": {"remote": cluster}}).training
    upload = tmp_path / "job"
    pack(_spec(tmp_path, tiny_model, "env"), "", cfg, -1.0, upload)
    assert sorted(p.name for p in upload.rglob("*")) == [
        "data", "job.json", "spec.json", "train.jsonl", "valid.jsonl",
    ]  # fmt: skip
    client = JobSubmissionClient(cluster)
    probe = (
        "import json, os; print('ENV=' + json.dumps({k: os.environ.get(k) for k in"
        " ('ANTHROPIC_API_KEY', 'HF_TOKEN')}))"
    )
    job = client.submit_job(entrypoint=f'python -c "{probe}"', runtime_env=runtime_env(upload, cfg))
    deadline = time.monotonic() + 120
    while client.get_job_status(job) not in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    logs = client.get_job_logs(job)
    assert 'ENV={"ANTHROPIC_API_KEY": null, "HF_TOKEN": null}' in logs, logs[-2000:]
    assert "sk-ant-fake" not in logs and "hf_fake" not in logs


async def test_a_remote_run_past_its_timeout_is_stopped(
    cluster: str, tmp_path: Path, tiny_model: Path
) -> None:
    from ray.job_submission import JobSubmissionClient

    raw = {
        "remote": cluster,
        "remote_storage": str(tmp_path / "st"),
        "remote_timeout_minutes": 0.05,
    }
    cfg = parse_config({"training": {"backend": "cuda", **raw}}).training
    run_dir = tmp_path / "slow"
    run_dir.mkdir()
    late = RemoteRun(cfg, "cuda", _spec(tmp_path, tiny_model, "slow"), run_dir)
    with pytest.raises(TrainingFailed, match=r"^remote training exceeded 0.05 minutes"):
        await late.run(lambda p: None)
    status = JobSubmissionClient(cluster).get_job_status(late.job_id)
    assert str(status.value) in ("STOPPED", "FAILED"), status


def test_an_upload_above_the_limit_is_refused_in_one_line(tmp_path: Path, tiny_model: Path) -> None:
    cfg = parse_config({"training": {"remote": WRONG, "remote_max_upload_mb": 0.001}}).training
    with pytest.raises(TrainingFailed, match=r"MB, above training.remote_max_upload_mb = 0.001$"):
        pack(_spec(tmp_path, tiny_model, "big"), "", cfg, -1.0, tmp_path / "job")
