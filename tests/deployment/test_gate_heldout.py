"""The gate is never skipped: first versions are judged against the base, a pool without a test
split gets held-out sessions, too little data means canary only ("ungated"), and without mlx-lm
the gate runs on torch."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.control.cli import main
from sam_brain.control.status import self_status
from sam_brain.home import Home
from sam_brain.pool import file_lock
from sam_brain.protocols import Sample, stable_id
from sam_brain.train import release as release_mod
from sam_brain.train.job import TrainingJob, build_dataset
from sam_brain.train.release import release

pytestmark = pytest.mark.slow
Rows = Callable[[int, int], list[dict[str, Any]]]


def make_home(root: Path, model: Path, **deployment: Any) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(root / "data"),
            "training": {
                "mlx_base_model": str(model),
                "cuda_base_model": str(model),
                "backend": "mlx",
                "profile": "t",
            },
            # The tiny random model rambles: the generation checks are not what is tested here.
            "deployment": {
                "gate_max_repetition": 1.0,
                "gate_min_terminated": 0.0,
                "gate_prompts": 1,
                **deployment,
            },
            "profiles": {
                "t": {
                    "lora_rank": 8,
                    "lora_alpha": 16.0,
                    "batch_size": 4,
                    "grad_accum": 1,
                    "max_seq_length": 64,
                    "num_layers": -1,
                    "learning_rate": 1e-2,
                    "max_steps": 30,
                    "eval_every": 30,
                    "save_every": 30,
                }
            },
        }
    )
    return Home.open(cfg)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def deploy(home: Home, adapter: Path, model: Path, test: Path | None, **kw: Any) -> Any:
    return release(
        home, adapter, base_model_dir=str(model), base_ref=str(model), test_path=test, **kw
    )


def test_first_version_is_judged_against_the_base(
    trained_adapters: dict[str, Path], tiny_model: Path, tmp_path: Path, rows_of: Rows
) -> None:
    home = make_home(tmp_path, tiny_model)
    test = write_rows(tmp_path / "test.jsonl", rows_of(40, 52))
    out = deploy(home, trained_adapters["mlx"], tiny_model, test)
    assert out.action == "activated", out.reasons
    assert out.report["incumbent"] is None and out.report["scored"] == 12
    assert out.report["candidate_loss"]["mean_loss"] < out.report["base"]["mean_loss"]
    assert (
        any("< base" in r for r in out.reasons) and "12 rows of the test split" in out.reasons[-1]
    )
    assert home.versions.current().gate == "passed"  # type: ignore[union-attr]
    evaluated = home.store.events("evaluated")[0]["data"]
    assert evaluated["against"] == "base" and evaluated["promote"] is True
    home.close()


def test_too_little_held_out_data_means_canary_only_and_ungated_is_shown(
    trained_adapters: dict[str, Path],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    rows_of: Rows,
) -> None:
    home = make_home(tmp_path, tiny_model)
    few = write_rows(tmp_path / "few.jsonl", rows_of(40, 43))
    # First version: no active one, so the canary runs beside the base model, never active.
    first = deploy(home, trained_adapters["mlx"], tiny_model, few)
    assert first.action == "canary" and home.versions.current() is None
    assert first.reasons[0].startswith("ungated: 3 held-out rows") and "needs 8" in first.reasons[0]
    assert first.report is not None and first.report["scored"] == 3  # judged, but no verdict
    doc = self_status(home)["training_stats"]["deployment"]["canary"]
    assert doc["version"] == first.version and doc["gate"] == "ungated"
    # With an active version, an ungated candidate also starts as a canary.
    from deployment import canary

    canary.promote(home.versions)
    second = deploy(home, trained_adapters["cuda"], tiny_model, None)  # pool: no test split
    assert second.action == "canary" and "0 rows of the pool's test split" in second.reasons[0]
    assert home.versions.current().version == first.version  # type: ignore[union-attr]
    status = self_status(home)["training_stats"]
    assert status["model_gate"] == "ungated"
    data = home.data
    home.close()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(f'data_dir = "{data}"\n[api]\nport = 9\n')
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all(" ungated " in line for line in lines), lines
    assert main(["status"]) == 0
    assert "ungated" in capsys.readouterr().out


def fill(home: Home, groups: int, per_group: int, rows_of: Rows) -> None:
    rows = rows_of(0, groups * per_group)
    samples = []
    for i, row in enumerate(rows):
        g = f"session-{i % groups}"
        samples.append(
            (
                Sample(
                    id=stable_id("t", str(i)),
                    source="sessions",
                    source_key=g,
                    group=g,
                    messages=row["messages"],
                ),
                "val" if g == "session-0" else "train",
            )
        )
    with file_lock(home.pool.lock_path):
        home.pool.upsert(samples)


def test_no_test_split_holds_out_whole_sessions_kept_out_of_training(
    tiny_model: Path, tmp_path: Path, rows_of: Rows
) -> None:
    home = make_home(tmp_path, tiny_model)
    fill(home, groups=11, per_group=4, rows_of=rows_of)
    counts = build_dataset(home, tmp_path / "ds")
    assert counts["held_out_groups"] == 2  # 20% of the 10 train sessions
    assert (counts["train"], counts["val"], counts["test"]) == (32, 4, 8)
    lines = {
        name: set((tmp_path / "ds" / f"{name}.jsonl").read_text().splitlines())
        for name in ("train", "valid", "test")
    }
    assert not lines["test"] & lines["train"] and not lines["test"] & lines["valid"]
    # Stable: a second build holds out the same sessions.
    assert build_dataset(home, tmp_path / "ds2") == counts
    assert (tmp_path / "ds2" / "test.jsonl").read_text() == (
        tmp_path / "ds" / "test.jsonl"
    ).read_text()
    home.close()


def test_a_run_without_test_split_is_gated_on_held_out_sessions(
    tiny_model: Path, tmp_path: Path, rows_of: Rows
) -> None:
    home = make_home(tmp_path, tiny_model)
    fill(home, groups=11, per_group=4, rows_of=rows_of)
    run = asyncio.run(TrainingJob(home, "mlx", "forced").execute())
    release_doc = run.metrics["release"]
    assert release_doc["action"] in ("activated", "rejected"), release_doc
    assert any("2 sessions held out from this run's training" in r for r in release_doc["reasons"])
    report = json.loads((home.reports_dir / f"eval-{run.run_id}.json").read_text())
    assert report["scored"] == 8 and report["incumbent"] is None
    assert report["notes"][0].startswith("held-out data: 8 rows of 2 sessions")
    home.close()


def test_without_mlx_the_gate_runs_on_torch(
    trained_adapters: dict[str, Path],
    tiny_model: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    rows_of: Rows,
) -> None:
    test = write_rows(tmp_path / "test.jsonl", rows_of(40, 52))
    with_mlx = make_home(tmp_path / "mlx", tiny_model)
    mlx_out = deploy(with_mlx, trained_adapters["cuda"], tiny_model, test)
    with_mlx.close()
    monkeypatch.setattr(release_mod, "mlx_available", lambda: False)
    used: list[str] = []
    real = release_mod.gate_exclusive

    def spy(base: str) -> Any:
        run = real(base)
        assert run is not None
        return lambda fn: run(lambda model: used.append(type(model).__name__) or fn(model))

    monkeypatch.setattr(release_mod, "gate_exclusive", spy)
    home = make_home(tmp_path / "torch", tiny_model)
    out = deploy(home, trained_adapters["cuda"], tiny_model, test)
    assert used == ["TorchResident"]
    assert out.action == mlx_out.action == "activated", out.reasons
    torch_losses = out.report["candidate_loss"]["per_sample"]
    mlx_losses = mlx_out.report["candidate_loss"]["per_sample"]
    assert torch_losses == pytest.approx(mlx_losses, abs=1e-4)  # the same gate on either stack
    assert out.report["base"]["mean_loss"] == pytest.approx(
        mlx_out.report["base"]["mean_loss"], abs=1e-4
    )
    home.close()
