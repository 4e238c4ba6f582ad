"""A schema -> `generate` -> validated samples in the pool -> an SFT run on the real model.

The teacher is a scripted OpenAI-wire server that answers with valid, distinct examples of the
packaged samctl schema; the run is a real MLX LoRA run on SmolLM2-135M-Instruct (few steps), in
process, through the same `TrainingJob` the daemon uses.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from sam_brain.config_load import parse_config
from sam_brain.dev.teacher_wire import Wire, samctl_examples, serve
from sam_brain.home import Home
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.runner import run_job
from sam_brain.train.job import TrainingJob
from sam_brain.train.losspoints import loss_curve

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


def test_generated_samples_train_the_real_model(real_model: Path, tmp_path: Path) -> None:
    with serve(Wire(samctl_examples)) as wire:
        doc = {
            "data_dir": str(tmp_path / "data"),
            "teacher": {"provider": "openai", "base_url": wire.url + "/v1", "concurrency": 4},
            "training": {"backend": "mlx", "mlx_base_model": str(real_model),
                         "min_for_training": 10, "profile": "t", "max_retries": 0},
            "deployment": {"gate_min_rows": 1, "gate_max_repetition": 1.0,
                           "gate_min_terminated": 0.0},
            "profiles": {"t": {"lora_rank": 4, "lora_alpha": 8.0, "batch_size": 2,
                               "grad_accum": 1, "max_seq_length": 256, "num_layers": 4,
                               "learning_rate": 1e-3, "max_steps": 10, "eval_every": 5,
                               "save_every": 5}},
        }  # fmt: skip
        home = Home.open(parse_config(doc))
        spec = JobSpec(kind="generate", source="samctl", count=60, training="",
                       options={"batch_size": 10})  # fmt: skip
        status = run_job(home, spec)
    assert status.state == "done" and status.counts["valid"] == 60
    assert status.stored == 60 == home.pool.stats()["by_source"]["teacher"]
    job = TrainingJob(home, "mlx", "forced")
    asyncio.run(job.execute())
    run = home.store.last_run()
    assert run is not None and run.status == "completed", run and run.reason
    data = home.runs_dir / run.run_id / "data"
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert rows and all(json.loads(r["messages"][-1]["content"])["command"] for r in rows)
    # The model learned from them: validation loss fell between the two evaluations.
    vals = [p["val_loss"] for p in loss_curve(home.store, run.run_id)["points"] if p["val_loss"]]
    assert len(vals) >= 2 and vals[-1] < vals[0]
    home.close()
