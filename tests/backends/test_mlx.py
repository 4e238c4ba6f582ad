"""MLX backend: real LoRA training on the tiny model, resume, cancel, NaN, OOM, early stop."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pytest

from backends.checkpoint import LATEST, load_checkpoint, save_checkpoint
from backends.mlx import MLXBackend
from backends.mlx_loop import Buckets, enable_grad_checkpoint
from backends.mlx_loss import evaluate, masked_loss, split_head
from backends.run_options import HONOURED
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable, TrainingFailed
from sam_brain.masking import encode_rows, load_rows
from sam_brain.protocols import Progress, TrainSpec

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
KEYS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
PROFILE = asdict(
    Profile(
        lora_rank=4,
        lora_alpha=8.0,  # scale 2.0, as the 8gb profile
        lora_keys=KEYS,
        num_layers=-1,
        batch_size=2,
        grad_accum=2,
        max_seq_length=96,
        learning_rate=1e-2,
        max_steps=8,
        eval_every=4,
        save_every=2,
    )
)


def _row(i: int) -> dict[str, Any]:
    colour = COLOURS[i % len(COLOURS)]
    return {
        "messages": [
            {"role": "user", "content": f"Which colour is item {i}?"},
            {"role": "assistant", "content": f"Item {i} is {colour}. Done."},
        ]
    }


class Crash(Exception):
    """Stands in for the process dying (power loss, kill -9) in the middle of a run."""


class Recorder:
    """Collects progress reports; optionally raises once at a given step."""

    def __init__(self, raise_at: int = 0, error: Exception | None = None) -> None:
        self.reports: list[Progress] = []
        self.raise_at, self.error = raise_at, error

    def __call__(self, p: Progress) -> None:
        self.reports.append(p)
        if self.error is not None and p.step == self.raise_at:
            err, self.error = self.error, None
            raise err

    @property
    def steps(self) -> list[int]:
        return [p.step for p in self.reports]

    def loss_at(self, step: int) -> float:
        loss = next(p.train_loss for p in self.reports if p.step == step)
        assert loss is not None
        return loss


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("data")
    (data / "train.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in range(16)))
    (data / "valid.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in (100, 101, 102)))
    return data


def _spec(model: Path, data: Path, out: Path, **profile: Any) -> TrainSpec:
    return TrainSpec(
        run_id=out.name,
        base_model=str(model),
        data_dir=str(data),
        out_dir=str(out),
        profile={**PROFILE, **profile},
        seed=0,
    )


def _never() -> bool:
    return False


@pytest.fixture(scope="module")
def full_run(
    tiny_model: Path, data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Recorder, Path]:
    """One uninterrupted 8-step run that other tests compare against."""
    out = tmp_path_factory.mktemp("full")
    rec = Recorder()
    result = MLXBackend().train(_spec(tiny_model, data_dir, out), rec, _never)
    return result, rec, out


def _tensors(path: Path) -> dict[str, Any]:
    import mlx.core as mx

    loaded = mx.load(str(path))
    assert isinstance(loaded, dict)
    return loaded


# ---------------------------------------------------------------------------------------------
# Fast: batching, checkpoints, options


def test_buckets_group_similar_lengths_and_replay_by_seed() -> None:
    rows = [([1] * n, [0] + [1] * (n - 1)) for n in (5, 30, 6, 31, 7, 32)]
    buckets = Buckets(rows, batch_size=2, seed=7)

    assert [[len(rows[i][0]) for i in b] for b in buckets.batches] == [[5, 6], [7, 30], [31, 32]]
    epoch0 = [buckets.micro_batch(k) for k in range(3)]
    assert sorted(n for _, _, n in epoch0) == [11, 37, 63]  # every batch once per epoch
    ids, mask, _ = next(b for b in epoch0 if b[2] == 11)
    assert ids.shape == (2, 8)  # padded to a multiple of 8, not to the longest row overall
    assert mask[:, 6:].sum().item() == 0
    orders = [[Buckets(rows, 2, seed).micro_batch(k)[2] for k in range(12)] for seed in (7, 7, 8)]
    assert orders[0] == orders[1]
    assert orders[0] != orders[2]


def test_checkpoint_publishes_atomically_and_keeps_only_the_latest(tmp_path: Path) -> None:
    def write(d: Path) -> None:
        (d / "w.bin").write_bytes(b"x")

    first = save_checkpoint(tmp_path, 2, {"step": 2}, write)
    second = save_checkpoint(tmp_path, 4, {"step": 4}, write)

    def broken(d: Path) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 6, {"step": 6}, broken)
    assert not first.exists()
    assert (tmp_path / LATEST).read_text().strip() == second.name
    assert load_checkpoint(tmp_path) == (second, {"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LATEST, second.name])


def test_every_profile_field_is_honoured() -> None:
    # A new Profile field must be implemented here or be refused; this names it when added.
    assert {f.name for f in fields(Profile)} <= HONOURED


def test_preflight_counts_tokens_and_estimates_memory(tiny_model: Path, data_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    expected, _ = encode_rows(tok, load_rows(data_dir / "train.jsonl"), 96)
    spec = _spec(tiny_model, data_dir, data_dir / "unused")

    pre = MLXBackend().preflight(spec)
    bigger = MLXBackend().preflight(_spec(tiny_model, data_dir, data_dir / "u", batch_size=8))
    saved = MLXBackend().preflight(
        _spec(tiny_model, data_dir, data_dir / "u", batch_size=8, grad_checkpoint=True)
    )

    assert (pre.train_samples, pre.val_samples) == (16, 3)
    assert pre.train_tokens == sum(len(ids) for ids, _ in expected)
    weights_mb = (tiny_model / "model.safetensors").stat().st_size / 1e6
    assert weights_mb < pre.estimated_memory_mb < bigger.estimated_memory_mb
    assert saved.estimated_memory_mb < bigger.estimated_memory_mb
    assert not (data_dir / "unused").exists()


def test_preflight_refuses_options_it_cannot_honour(tiny_model: Path, data_dir: Path) -> None:
    spec = _spec(
        tiny_model,
        data_dir,
        data_dir / "refused",
        load_in_4bit=True,
        lora_keys=["self_attn.q_proj", "mlp.nope"],
        num_layers=9,
    )
    backend = MLXBackend()
    with pytest.raises(BackendUnavailable) as err:
        backend.preflight(spec)
    message = str(err.value)
    assert "load_in_4bit=True" in message
    assert "mlp.nope" in message
    assert "num_layers=9 but the model has 4 blocks" in message
    with pytest.raises(BackendUnavailable):
        backend.train(spec, Recorder(), _never)
    assert not (data_dir / "refused").exists()


# ---------------------------------------------------------------------------------------------
# Slow: real training


@pytest.mark.slow
def test_training_lowers_val_loss_and_moves_lora_weights(
    full_run: tuple[Any, Recorder, Path], tiny_model: Path
) -> None:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    result, rec, out = full_run
    m = result.metrics
    assert result.steps == 8
    assert rec.steps == list(range(1, 9))
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.1
    assert m["tokens"] > 0 and m["final_train_loss"] > 0
    assert all(
        p.tokens_per_sec and p.peak_memory_mb and p.eta_seconds is not None for p in rec.reports
    )

    # The same seed gives the initial LoRA matrices the run started from.
    model = load(str(tiny_model))[0]
    mx.random.seed(0)
    model.freeze()
    linear_to_lora_layers(model, 4, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
    initial = dict(tree_flatten(model.trainable_parameters()))
    trained = _tensors(out / "adapters.safetensors")
    assert set(trained) == set(initial)
    assert len(trained) == 4 * len(KEYS) * 2
    for name, value in trained.items():
        assert not mx.allclose(value, initial[name]).item(), name

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["base_model"] == str(tiny_model)
    assert manifest["effective_profile"]["num_layers"] == 4
    assert manifest["metrics"] == m
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_parameters"]["scale"] == 2.0


@pytest.mark.slow
def test_best_adapter_reloads_in_mlx_lm_and_generate(
    full_run: tuple[Any, Recorder, Path], tiny_model: Path, data_dir: Path
) -> None:
    from mlx_lm import load

    result, _, out = full_run
    model, tok = load(str(tiny_model), adapter_path=str(out))[:2]
    rows, _ = encode_rows(tok, load_rows(data_dir / "valid.jsonl"), 96)
    assert evaluate(model, Buckets(rows, 2, 0)) == pytest.approx(
        result.metrics["best_val_loss"], abs=1e-4
    )

    backend = MLXBackend()
    chat = [{"role": "user", "content": "Which colour is item 3?"}]
    tuned = backend.generate(str(tiny_model), str(out), chat, max_tokens=8)
    assert tuned == backend.generate(str(tiny_model), str(out), chat, max_tokens=8)
    assert tuned != backend.generate(str(tiny_model), None, chat, max_tokens=8)


@pytest.mark.slow
def test_cancel_saves_and_resume_continues_from_saved_step(
    full_run: tuple[Any, Recorder, Path], tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    _, full, full_out = full_run
    spec = _spec(tiny_model, data_dir, tmp_path / "run")
    first = Recorder()

    stopped = MLXBackend().train(spec, first, lambda: bool(first.steps) and first.steps[-1] == 3)

    assert stopped.steps == 3
    assert (tmp_path / "run" / "adapters.safetensors").exists()
    found = load_checkpoint(tmp_path / "run" / "checkpoint")
    assert found is not None and found[1]["step"] == 3

    second = Recorder()
    resumed = MLXBackend().train(spec, second, _never)

    assert second.steps == [4, 5, 6, 7, 8]
    assert resumed.steps == 8
    assert resumed.metrics["initial_val_loss"] == full_run[0].metrics["initial_val_loss"]
    # Optimizer state, data position and schedule were restored: same path as no interruption.
    for step in (4, 8):
        assert second.loss_at(step) == pytest.approx(full.loss_at(step), rel=1e-4)
    assert resumed.metrics["best_val_loss"] == pytest.approx(
        full_run[0].metrics["best_val_loss"], rel=1e-4
    )
    import mlx.core as mx

    ends = [load_checkpoint(d / "checkpoint") for d in (full_out, tmp_path / "run")]
    weights = [_tensors(found[0] / "adapters.safetensors") for found in ends if found]
    assert len(weights) == 2 and set(weights[0]) == set(weights[1])
    for name, value in weights[0].items():
        assert mx.allclose(value, weights[1][name], atol=1e-5).item(), name


@pytest.mark.slow
def test_crash_resumes_from_last_periodic_checkpoint(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    spec = _spec(tiny_model, data_dir, tmp_path / "run", max_steps=6)
    with pytest.raises(Crash):
        MLXBackend().train(spec, Recorder(raise_at=5, error=Crash()), _never)

    after = Recorder()
    result = MLXBackend().train(spec, after, _never)

    assert after.steps == [5, 6]  # save_every=2: step 4 was the last checkpoint
    assert result.steps == 6
    assert "resumed from step 4" in result.notes


@pytest.mark.slow
def test_nan_loss_raises_training_failed(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    # Adam bounds each update by the learning rate, so only an absurd one overflows float32.
    spec = _spec(tiny_model, data_dir, tmp_path / "run", learning_rate=1e38, eval_every=100)
    with pytest.raises(TrainingFailed, match="loss became nan"):
        MLXBackend().train(spec, Recorder(), _never)


@pytest.mark.slow
def test_out_of_memory_halves_batch_and_retries_once(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    # MLX raises RuntimeError on failed allocations; injected here because RAM cannot run out.
    oom = RuntimeError("[malloc] Unable to allocate 4194304 bytes")
    spec = _spec(tiny_model, data_dir, tmp_path / "run", max_steps=4)
    rec = Recorder(raise_at=2, error=oom)

    result = MLXBackend().train(spec, rec, _never)

    assert rec.steps == [1, 2, 2, 3, 4]  # the retry is reported at the step it resumes from
    assert result.steps == 4
    note = f"out of memory ({oom}); retried with batch_size 1, grad_accum 4"
    assert rec.reports[2].message == note and note in result.notes
    effective = json.loads((tmp_path / "run" / "manifest.json").read_text())["effective_profile"]
    assert (effective["batch_size"], effective["grad_accum"]) == (1, 4)

    class AlwaysOom:
        def __call__(self, p: Progress) -> None:
            raise RuntimeError("[malloc] Unable to allocate 8 bytes")

    with pytest.raises(TrainingFailed, match="Unable to allocate"):
        MLXBackend().train(_spec(tiny_model, data_dir, tmp_path / "again"), AlwaysOom(), _never)


@pytest.mark.slow
def test_early_stopping_and_a_finished_run_is_not_trained_again(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    # A learning rate this small leaves the validation loss bit-for-bit unchanged.
    spec = _spec(
        tiny_model, data_dir, tmp_path / "run", learning_rate=1e-12, eval_every=1, patience=2
    )
    result = MLXBackend().train(spec, Recorder(), _never)

    assert result.steps == 2
    assert "stopped: early_stopped at step 2/8" in result.notes
    again = Recorder()
    assert MLXBackend().train(spec, again, _never).steps == 2
    assert again.steps == []


@pytest.mark.slow
def test_grad_checkpoint_gives_the_same_gradients(tiny_model: Path, data_dir: Path) -> None:
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tok = load(str(tiny_model))[:2]
    model.freeze()
    linear_to_lora_layers(model, 4, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
    # lora_b starts at zero; shift it so every gradient path is non-trivial.
    model.update(tree_map(lambda p: p + 0.01, model.trainable_parameters()))
    rows, _ = encode_rows(tok, load_rows(data_dir / "valid.jsonl"), 96)
    ids, mask, _ = Buckets(rows, 3, 0).micro_batch(0)
    grad_fn = nn.value_and_grad(model, masked_loss)  # type: ignore[attr-defined]

    (plain_loss, _), plain = grad_fn(model, ids, mask)
    original = type(model.layers[0])
    undo = enable_grad_checkpoint(model)
    assert type(model.layers[0]) is not original
    (ckpt_loss, _), ckpt = grad_fn(model, ids, mask)
    undo()

    assert type(model.layers[0]) is original
    assert ckpt_loss.item() == pytest.approx(plain_loss.item(), rel=1e-6)
    ckpt_grads = dict(tree_flatten(ckpt))
    for name, g in dict(tree_flatten(plain)).items():
        assert mx.allclose(g, ckpt_grads[name], atol=1e-6).item(), name


def test_split_head_loss_matches_full_logits(tiny_model: Path, data_dir: Path) -> None:
    """The head on supervised positions only gives the loss and gradients of full logits."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, tok = load(str(tiny_model))[:2]
    assert split_head(model) is not None  # the tiny model is a qwen2: the split path runs
    model.freeze()
    linear_to_lora_layers(model, 4, {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": KEYS})
    model.update(tree_map(lambda p: p + 0.01, model.trainable_parameters()))
    rows, _ = encode_rows(tok, load_rows(data_dir / "valid.jsonl"), 96)
    ids, mask, _ = Buckets(rows, 3, 0).micro_batch(0)
    assert 0 < float(mask[:, 1:].sum().item()) < mask[:, 1:].size  # some context is masked

    def full_loss(model: Any, ids: Any, mask: Any) -> Any:
        weights = mask[:, 1:]
        ce = nn.losses.cross_entropy(model(ids[:, :-1]), ids[:, 1:]) * weights
        return ce.sum() / weights.sum(), weights.sum()

    (split, n_split), g_split = nn.value_and_grad(model, masked_loss)(model, ids, mask)  # type: ignore[attr-defined]
    (full, n_full), g_full = nn.value_and_grad(model, full_loss)(model, ids, mask)  # type: ignore[attr-defined]
    assert n_split.item() == n_full.item()
    assert split.item() == pytest.approx(full.item(), rel=1e-5)
    full_grads = dict(tree_flatten(g_full))
    for name, g in dict(tree_flatten(g_split)).items():
        assert mx.allclose(g, full_grads[name], atol=1e-5).item(), name

    model.model_type = "unknown-family"  # not known to be head(body(x)): the plain path
    assert split_head(model) is None
    (plain, _), _ = nn.value_and_grad(model, masked_loss)(model, ids, mask)  # type: ignore[attr-defined]
    assert plain.item() == pytest.approx(full.item(), rel=1e-5)
