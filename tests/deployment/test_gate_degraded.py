"""A candidate trained on shuffled targets must never reach traffic."""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from backends.mlx import MLXBackend
from deployment.evaluate import evaluate_version
from deployment.resident import ResidentModel
from sam_brain.config import Profile
from sam_brain.protocols import TrainSpec
from sam_brain.store import Store
from sam_brain.versions import Versions

pytestmark = pytest.mark.slow
COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "black", "white"]


def rows(n: int, shuffle: bool = False) -> list[dict[str, Any]]:
    answers = [f"Box {i} is {COLOURS[i % 8]}." for i in range(n)]
    if shuffle:
        random.Random(0).shuffle(answers)
    return [
        {
            "messages": [
                {"role": "user", "content": f"What colour is box {i}?"},
                {"role": "assistant", "content": answers[i]},
            ]
        }
        for i in range(n)
    ]


def train(model: Path, root: Path, name: str, data: list[dict[str, Any]]) -> Path:
    d = root / f"{name}-data"
    d.mkdir()
    (d / "train.jsonl").write_text("\n".join(json.dumps(r) for r in data[:32]) + "\n")
    (d / "valid.jsonl").write_text("\n".join(json.dumps(r) for r in data[32:]) + "\n")
    profile = Profile(
        lora_rank=8,
        lora_alpha=16.0,
        num_layers=-1,
        batch_size=4,
        grad_accum=1,
        max_seq_length=64,
        learning_rate=1e-2,
        max_steps=40,
        eval_every=10,
        save_every=40,
        patience=10,
    )
    spec = TrainSpec(
        run_id=name,
        base_model=str(model),
        data_dir=str(d),
        out_dir=str(root / name),
        profile=asdict(profile),
        seed=0,
    )
    MLXBackend().train(spec, lambda p: None, lambda: False)
    return root / name


def test_shuffled_target_candidate_is_blocked(tiny_model: Path, tmp_path: Path) -> None:
    good = train(tiny_model, tmp_path, "good", rows(40))
    bad = train(tiny_model, tmp_path, "bad", rows(40, shuffle=True))
    versions = Versions(Store(tmp_path / "state.db"), tmp_path / "versions")
    versions.activate(versions.register(good).version)
    candidate = versions.register(bad).version
    test = tmp_path / "test.jsonl"
    test.write_text("\n".join(json.dumps(r) for r in rows(48)[40:]) + "\n")
    report = evaluate_version(versions, ResidentModel(str(tiny_model)), candidate, test)
    assert not report.gate.promote, report.gate.reasons
    assert report.candidate_loss.mean_loss > report.incumbent_loss.mean_loss  # type: ignore[union-attr]
    assert versions.current().version == "v1.0.0"  # type: ignore[union-attr]
