"""kill -9 of the real training subprocess mid-run, then resume: same steps, same loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config import Profile
from sam_brain.protocols import TrainSpec
from sam_brain.train.supervisor import worker_env

pytestmark = pytest.mark.slow


def rows(n: int) -> list[dict[str, Any]]:
    words = ["red", "green", "blue", "amber", "violet", "teal"]
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is box {i}?"},
                {"role": "assistant", "content": f"Box {i} is {words[i % 6]}."},
            ]
        }
        for i in range(n)
    ]


def write_data(d: Path) -> None:
    d.mkdir(parents=True)
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows(24)) + "\n")
    (d / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in rows(30)[24:]) + "\n")


def spec_for(tmp: Path, model: Path, name: str) -> Path:
    profile = Profile(
        lora_rank=4,
        lora_alpha=8.0,
        num_layers=-1,
        batch_size=2,
        grad_accum=1,
        max_seq_length=64,
        learning_rate=5e-3,
        max_steps=16,
        eval_every=4,
        save_every=2,
    )
    spec = TrainSpec(
        run_id=name,
        base_model=str(model),
        data_dir=str(tmp / "data"),
        out_dir=str(tmp / name),
        profile=asdict(profile),
        seed=1,
    )
    path = tmp / f"{name}.json"
    path.write_text(spec.to_json())
    return path


def run_worker(spec: Path, kill_at_step: int = 0) -> list[dict[str, Any]]:
    """Run `python -m sam_brain.train.worker mlx spec`; SIGKILL it once it reports `kill_at_step`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_brain.train.worker", "mlx", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=worker_env("mlx"),
    )
    assert proc.stdout is not None
    reports = []
    for line in proc.stdout:
        if not line.startswith("@@"):
            continue
        msg = json.loads(line[2:])
        reports.append(msg)
        if kill_at_step and msg["kind"] == "progress" and msg["step"] >= kill_at_step:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    return reports


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, tiny_model: Path) -> None:
    write_data(tmp_path / "data")
    clean = run_worker(spec_for(tmp_path, tiny_model, "clean"))
    clean_result = next(m for m in clean if m["kind"] == "result")

    killed_spec = spec_for(tmp_path, tiny_model, "killed")
    first = run_worker(killed_spec, kill_at_step=7)
    assert not any(m["kind"] == "result" for m in first)  # it really died mid-run
    second = run_worker(killed_spec)
    steps = [m["step"] for m in second if m["kind"] == "progress"]
    assert steps and steps[0] > 1, "the resumed run must not start again at step 1"
    assert steps[0] <= 8  # from the last checkpoint (every 2 steps) at or before the kill
    result = next(m for m in second if m["kind"] == "result")
    assert result["steps"] == clean_result["steps"] == 16
    assert result["metrics"]["final_train_loss"] == pytest.approx(
        clean_result["metrics"]["final_train_loss"], rel=1e-3
    )
    assert result["metrics"]["best_val_loss"] == pytest.approx(
        clean_result["metrics"]["best_val_loss"], rel=1e-3
    )
