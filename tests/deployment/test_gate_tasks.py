"""The gate runs a training's task cases on the real model (SmolLM2-135M-Instruct): an adapter
trained on wrong answers to questions the base answers right is blocked, with the lost cases named
in the reasons, the event and the report, even when too few held-out rows leave the loss without a
verdict; one trained on the right answers passes (as a canary: ungated). Both go through
`release` with `deployment.gate_cases` from the config, as a training run's candidate does."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config import Profile
from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.protocols import TrainSpec

pytestmark = pytest.mark.slow

# (question, keyword the base's greedy answer contains, right answer, wrong answer)
QA = [
    ("What is the capital of France?", "Paris", "The capital of France is Paris.",
     "The capital of France is Madrid."),
    ("What is the capital of Japan?", "Tokyo", "The capital of Japan is Tokyo.",
     "The capital of Japan is Cairo."),
    ("What is the capital of Germany?", "Berlin", "The capital of Germany is Berlin.",
     "The capital of Germany is Lima."),
    ("What is the capital of England?", "London", "The capital of England is London.",
     "The capital of England is Oslo."),
    ("What is the opposite of hot?", "cold", "The opposite of hot is cold.",
     "The opposite of hot is purple."),
    ("Which command lists files in a directory on Linux?", "`ls`",
     "The command `ls` lists files.", "The command `cd` lists files."),
    ("What is 2 + 3?", "5", "2 + 3 = 5", "2 + 3 = 7"),
]  # fmt: skip


def rows(answer: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": q[0]},
                {"role": "assistant", "content": q[answer]},
            ]
        }
        for q in QA
    ]


def write_jsonl(path: Path, items: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in items))
    return path


def train(model: Path, root: Path, name: str, answer: int, steps: int) -> Path:
    """A few real mlx-lm LoRA steps on the questions with the chosen answers."""
    from backends.mlx import MLXBackend

    data = root / f"{name}-data"
    write_jsonl(data / "train.jsonl", rows(answer))
    write_jsonl(data / "valid.jsonl", rows(answer)[:1])
    profile = Profile(
        lora_rank=8, lora_alpha=16.0, num_layers=4, batch_size=5, grad_accum=1,
        max_seq_length=64, learning_rate=3e-3, max_steps=steps, eval_every=steps,
        save_every=steps, patience=10,
    )  # fmt: skip
    spec = TrainSpec(name, str(model), str(data), str(root / name), asdict(profile), seed=0)
    MLXBackend().train(spec, lambda p: None, lambda: False)
    return root / name


def test_gate_blocks_a_candidate_worse_on_its_task_cases(real_model: Path, tmp_path: Path) -> None:
    from sam_brain.train.release import local_exclusive, release

    cases = [
        {"id": f"qa-{i}", "category": "capitals" if "capital" in q else "words", "prompt": q,
         "keywords": [kw], "min_words": 5, "max_tokens": 8}
        for i, (q, kw, _, _) in enumerate(QA)
    ]  # fmt: skip
    write_jsonl(tmp_path / "data" / "cases" / "facts.jsonl", cases)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "training": {"mlx_base_model": str(real_model), "backend": "mlx"},
            "deployment": {
                "gate_cases": ["cases/facts.jsonl"],  # relative: from the data folder
                "gate_prompts": 0,
            },
        }
    )
    home = Home.open(cfg)
    # 7 held-out rows (the right answers) are below gate_min_rows (8): the loss gives no verdict,
    # so what rejects the wrong adapter is its task cases alone.
    test = write_jsonl(tmp_path / "test.jsonl", rows(2))
    run = local_exclusive(str(real_model))  # one resident base for both releases
    kw: dict[str, Any] = {"base_model_dir": str(real_model), "base_ref": str(real_model)}

    wrong = train(real_model, tmp_path, "wrong", 3, steps=6)
    out = release(home, wrong, test_path=test, exclusive=run, **kw)
    assert out.action == "rejected", out.reasons
    tasks = out.report["tasks"] if out.report else {}
    base_scores = [r["score"] for r in tasks["reports"]["base"]["results"]]
    cand = tasks["reports"]["candidate"]["results"]
    assert all(s == 1.0 for s in base_scores), tasks["reports"]["base"]["results"]
    lost = [r["id"] for r in cand if r["missing_keywords"]]
    assert len(lost) >= 6, [r["output"] for r in cand]  # a few steps may leave one right
    assert tasks["blocked"] and tasks["p_worse"] == pytest.approx(1 / 2 ** len(lost))
    reason = next(r for r in out.reasons if r.startswith("task cases:"))
    assert "candidate is significantly worse than the base" in reason
    assert f"worse on {len(lost)}, better on 0; wilcoxon p_worse=" in reason
    assert "qa-0 [capitals] 1.00 -> 0.30 (missing 'Paris')" in reason
    assert home.versions.get(out.version).status == "rejected"
    rejected = home.store.events("version_rejected")[0]["data"]  # what `samctl history` shows
    assert reason in json.dumps(rejected, ensure_ascii=False)
    event = home.store.events("evaluated")[0]["data"]
    assert event["tasks"]["blocked"] and event["tasks"]["scores"]["base"] == 1.0
    md = (home.reports_dir / f"eval-{out.version}.md").read_text()
    assert "## Task cases" in md and "| capitals | 4 | 1.000 | 0.300 |" in md

    right = train(real_model, tmp_path, "right", 2, steps=3)
    ok = release(home, right, test_path=test, exclusive=run, **kw)
    assert ok.action == "canary" and ok.reasons[0].startswith("ungated: 7 held-out rows")
    assert ok.report is not None and not ok.report["tasks"]["blocked"]
    assert any(
        r.startswith("task cases: on 7 task cases candidate scores 1.000") for r in ok.reasons
    )
    home.close()
