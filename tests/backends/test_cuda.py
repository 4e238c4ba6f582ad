"""CUDA backend on the CPU: real 4-bit QLoRA on the tiny model, resume, cancel, NaN, OOM, DPO.

bitsandbytes 0.50 runs NF4 forward and backward on the CPU, so the 4-bit path itself is
trained here, not a stand-in. The adapter conversions are checked both ways, and a trained PEFT
adapter converted to mlx-lm's format must give the same logits in mlx-lm as in transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backends.cuda import CudaBackend
from backends.cuda_loop import Buckets, evaluate
from backends.cuda_options import lora_config, read_shape
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable, TrainingFailed
from sam_brain.masking import encode_rows, load_rows
from sam_brain.protocols import Progress, TrainSpec

WORDS = ["garden", "parser", "index", "config", "branch", "token", "cache", "request"]
KEYS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]
PROFILE = asdict(
    Profile(
        lora_rank=16,
        lora_alpha=32.0,
        lora_keys=KEYS,
        batch_size=4,
        grad_accum=1,
        max_seq_length=128,
        learning_rate=1e-2,
        max_steps=24,
        eval_every=8,
        save_every=8,
    )
)
QUESTION = [{"role": "user", "content": "Which word is number 3?"}]


def _row(i: int) -> dict[str, Any]:
    word = WORDS[i % len(WORDS)]
    return {
        "messages": [
            {"role": "user", "content": f"Which word is number {i % len(WORDS)}?"},
            {"role": "assistant", "content": f"The word is {word}."},
            {"role": "user", "content": "Again?"},
            {"role": "assistant", "content": f"Still {word}."},
        ]
    }


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # Tiny matrices: threads only add synchronisation, and the test machine is shared.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("data")
    (d / "train.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in range(48)))
    (d / "valid.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in range(100, 108)))
    return d


def _spec(base: Path, data: Path, out: Path, **profile: Any) -> TrainSpec:
    return TrainSpec(
        run_id="t",
        base_model=str(base),
        data_dir=str(data),
        out_dir=str(out),
        profile={**PROFILE, **profile},
    )


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_preflight_counts_and_refuses_what_it_cannot_honour(
    tiny_model: Path, data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM_BRAIN_CUDA_QUANTIZE", "0")
    assert CudaBackend().quantize is False
    monkeypatch.delenv("SAM_BRAIN_CUDA_QUANTIZE")
    assert CudaBackend().quantize is torch.cuda.is_available()
    monkeypatch.setenv("SAM_BRAIN_CUDA_QUANTIZE", "1")
    backend = CudaBackend()
    assert backend.quantize is True
    pre = backend.preflight(_spec(tiny_model, data_dir, tmp_path))
    assert (pre.train_samples, pre.val_samples) == (48, 8)
    assert pre.train_tokens > 48 * 20 and pre.estimated_memory_mb > 1
    assert "4-bit NF4" in pre.notes[0]

    bad = {"lora_keys": ["self_attn.q_proj", "self_attn.qq_proj"], "num_layers": 9, "fancy": 1}
    with pytest.raises(BackendUnavailable) as err:
        backend.preflight(_spec(tiny_model, data_dir, tmp_path, **bad))
    for part in ("'self_attn.qq_proj'", "num_layers=9 but", "fancy=1: not an option"):
        assert part in str(err.value)


@pytest.mark.slow
def test_qlora_4bit_training_lowers_val_loss_and_the_adapter_reloads(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    backend = CudaBackend(quantize=True)
    base = backend.load_model(tiny_model, training=False)
    q_proj: Any = base.model.layers[0].self_attn.q_proj
    kind = type(q_proj)
    assert (kind.__module__.split(".")[0], kind.__name__) == ("bitsandbytes", "Linear4bit")
    assert q_proj.weight.quant_type == "nf4"

    reports: list[Progress] = []
    spec = _spec(tiny_model, data_dir, tmp_path, max_steps=16)
    result = backend.train(spec, reports.append, lambda: False)
    m = result.metrics
    assert result.steps == 16 and [r.step for r in reports] == list(range(1, 17))
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.5
    assert next(r.step for r in reports if r.val_loss is not None) == 8
    assert all(r.tokens_per_sec and r.peak_memory_mb for r in reports)
    assert reports[-1].eta_seconds == 0.0
    assert any("torch AdamW instead of paged 8-bit AdamW" in n for n in result.notes)

    weights = _lora(tmp_path / "peft" / "adapter_model.safetensors")
    assert len(weights) == 2 * len(KEYS) * 4
    # PEFT initialises every B to zero: non-zero B means training moved the weights.
    assert all(w.abs().max() > 1e-3 for k, w in weights.items() if "lora_B" in k)
    assert {p.name for p in tmp_path.iterdir()} >= {
        "adapters.safetensors",
        "adapter_config.json",
        "peft",
        "manifest.json",
        "checkpoint",
    }

    # Reload the saved PEFT adapter on a fresh 4-bit base: same validation loss as recorded.
    model: Any = PeftModel.from_pretrained(
        backend.load_model(tiny_model, training=False), str(tmp_path / "peft")
    )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rows, _ = encode_rows(tok, load_rows(data_dir / "valid.jsonl"), 128)
    assert evaluate(model, Buckets(rows, 4, 0, tok.pad_token_id)) == pytest.approx(
        m["best_val_loss"], abs=1e-4
    )

    # generate() applies the adapter: it matches greedy decoding of the reloaded model.
    text = tok.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    enc = tok(text, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    tuned = backend.generate(str(tiny_model), str(tmp_path), QUESTION, max_tokens=8)
    assert tuned == expected != backend.generate(str(tiny_model), None, QUESTION, max_tokens=8)


@pytest.mark.slow
def test_cancel_saves_and_resume_continues_exactly(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    backend = CudaBackend()
    short = {"max_steps": 5, "save_every": 2, "eval_every": 2}
    polls = iter(range(100))
    stopped = backend.train(
        _spec(tiny_model, data_dir, tmp_path / "a", **short),
        lambda p: None,
        lambda: next(polls) >= 3,  # the 4th poll, before step 4, asks to stop
    )
    assert stopped.steps == 3 and "stopped: cancelled at step 3/5" in stopped.notes
    state = json.loads(next((tmp_path / "a" / "checkpoint").glob("step-*/state.json")).read_text())
    assert (state["step"], state["micro"]) == (3, 3)
    assert (tmp_path / "a" / "adapters.safetensors").exists()

    reports: list[Progress] = []
    resumed = backend.train(
        _spec(tiny_model, data_dir, tmp_path / "a", **short), reports.append, lambda: False
    )
    assert "resumed from step 3" in resumed.notes and resumed.steps == 5
    assert [r.step for r in reports] == [4, 5]

    straight = backend.train(
        _spec(tiny_model, data_dir, tmp_path / "b", **short), lambda p: None, lambda: False
    )
    assert straight.steps == 5
    a = _lora(next((tmp_path / "a" / "checkpoint").glob("step-*/adapter_model.safetensors")))
    b = _lora(next((tmp_path / "b" / "checkpoint").glob("step-*/adapter_model.safetensors")))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6)


@pytest.mark.slow
def test_nan_loss_raises_training_failed(tiny_model: Path, data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match=r"loss became (nan|inf)"):
        CudaBackend(quantize=False).train(
            _spec(tiny_model, data_dir, tmp_path, learning_rate=1e38, max_steps=8),
            lambda p: None,
            lambda: False,
        )


@pytest.mark.slow
def test_early_stopping_after_patience_evaluations_without_improvement(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    # A learning rate so small that the weights move below float32 resolution of the output.
    spec = _spec(tiny_model, data_dir, tmp_path, learning_rate=1e-20, max_steps=10, eval_every=1)
    result = CudaBackend(quantize=False).train(spec, lambda p: None, lambda: False)
    assert "stopped: early_stopped at step 3/10" in result.notes
    assert result.metrics["best_step"] == 0.0


@pytest.mark.slow
def test_grad_checkpoint_trains_the_same_weights(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    for flag in (False, True):
        spec = _spec(tiny_model, data_dir, tmp_path / str(flag), grad_checkpoint=flag, max_steps=2)
        CudaBackend().train(spec, lambda p: None, lambda: False)
    plain = _lora(
        next((tmp_path / "False" / "checkpoint").glob("step-*/adapter_model.safetensors"))
    )
    ckpt = _lora(next((tmp_path / "True" / "checkpoint").glob("step-*/adapter_model.safetensors")))
    assert any(w.abs().max() > 0 for k, w in plain.items() if "lora_B" in k)
    for key in plain:
        torch.testing.assert_close(plain[key], ckpt[key], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_trained_peft_adapter_gives_the_same_logits_in_mlx_lm(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    mx = pytest.importorskip("mlx.core")
    from mlx_lm import load
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    keys = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
    spec = _spec(
        tiny_model,
        data_dir,
        tmp_path / "out",
        lora_keys=keys,
        num_layers=2,
        max_steps=8,
        learning_rate=3e-2,
        eval_every=100,
    )
    backend = CudaBackend(quantize=False)
    backend.train(spec, lambda p: None, lambda: False)
    mlx_cfg = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert mlx_cfg["num_layers"] == 2 and mlx_cfg["lora_parameters"]["scale"] == 2.0

    ids = [[int(t) for t in np.random.default_rng(0).integers(0, 4000, size=24)]]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    with torch.no_grad():
        plain = base(input_ids=torch.tensor(ids)).logits.numpy()
        peft = PeftModel.from_pretrained(base, str(tmp_path / "out" / "peft"))
        tuned = peft(input_ids=torch.tensor(ids)).logits.numpy()
    model = load(str(tiny_model), adapter_path=str(tmp_path / "out"))[0]
    from_mlx = np.array(model(mx.array(ids)).astype(mx.float32))
    assert np.abs(tuned - plain).max() > 1e-2  # the adapter matters, so agreement means something
    np.testing.assert_allclose(from_mlx, tuned, rtol=0, atol=1e-4)

    # An mlx-lm-only adapter directory is converted on the fly for generation.
    (tmp_path / "mlx_only").mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        (tmp_path / "mlx_only" / name).write_bytes((tmp_path / "out" / name).read_bytes())
    assert backend.generate(str(tiny_model), str(tmp_path / "mlx_only"), QUESTION, 6) == (
        backend.generate(str(tiny_model), str(tmp_path / "out"), QUESTION, 6)
    )


@pytest.mark.slow
def test_dpo_stage_grows_the_preference_margin(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "valid.jsonl"):
        (data / name).write_bytes((data_dir / name).read_bytes())
    pairs = [
        {
            "prompt": [{"role": "user", "content": f"Which word is number {i}?"}],
            "chosen": f"The word is {w}.",
            "rejected": "I refuse to answer that question.",
        }
        for i, w in enumerate(WORDS)
    ]
    (data / "preference.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    reports: list[Progress] = []
    backend = CudaBackend()
    spec = _spec(
        tiny_model, data, tmp_path / "out", max_steps=2, dpo_learning_rate=5e-3, dpo_max_steps=6
    )
    result = backend.train(spec, reports.append, lambda: False)
    m = result.metrics
    assert m["dpo_steps"] == 6 and m["dpo_margin_after"] > m["dpo_margin_before"] + 1.0
    assert sum(r.message.startswith("dpo") for r in reports) == 6
    assert any(n.startswith("dpo: 8 pairs, 6 steps") for n in result.notes)
    sft = _lora(tmp_path / "out" / "checkpoint" / "sft_best.safetensors")
    final = _lora(tmp_path / "out" / "peft" / "adapter_model.safetensors")
    assert all(final[k].dtype == torch.float32 for k in final)
    assert any(not torch.equal(sft[k], final[k]) for k in sft)


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_then_the_length_and_retries_once(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    # torch raises OutOfMemoryError from inside a step; injected after step 2 because the
    # CPU cannot run out here (the same fault hook as the MLX test).
    reports: list[Progress] = []

    def oom_after_step_2(p: Progress) -> None:
        reports.append(p)
        if p.step == 2 and p.train_loss is not None:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB")

    quiet = {"max_steps": 4, "eval_every": 100, "save_every": 100}
    spec = _spec(tiny_model, data_dir, tmp_path / "run", **quiet)
    result = CudaBackend(quantize=False).train(spec, oom_after_step_2, lambda: False)

    assert [p.step for p in reports] == [1, 2, 2, 3, 4] and result.steps == 4
    note = "out of memory (CUDA out of memory. Tried to allocate 20.00 MiB); retried with "
    assert reports[2].message == note + "batch_size 2, grad_accum 2"
    assert reports[2].message in result.notes
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    effective = manifest["effective_profile"]
    assert (effective["batch_size"], effective["grad_accum"], effective["max_seq_length"]) == (
        2, 2, 128,
    )  # fmt: skip
    state = json.loads(
        next((tmp_path / "run" / "checkpoint").glob("step-*/state.json")).read_text()
    )
    # Two steps of 1 x 4 rows, the position doubled for batches of 2, then two steps of 2 x 2.
    assert (state["batch_size"], state["grad_accum"], state["micro"]) == (2, 2, 8)

    # At batch size 1 the length is halved instead; a second failure ends the run.
    seen: list[Progress] = []

    def always_oom(p: Progress) -> None:
        seen.append(p)
        raise RuntimeError("CUDA error: out of memory")

    spec = _spec(tiny_model, data_dir, tmp_path / "again", batch_size=1, **quiet)
    with pytest.raises(TrainingFailed, match="out of memory at step 2 with batch_size 1, "):
        CudaBackend(quantize=False).train(spec, always_oom, lambda: False)
    assert [p.step for p in seen] == [1, 1]
    assert seen[1].message.endswith("retried with max_seq_length 64")


def test_loss_on_kept_logits_equals_the_full_logits_loss(tiny_model: Path, data_dir: Path) -> None:
    """Logits only where the next token is supervised: same loss and LoRA gradients."""
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from backends.cuda_loop import _keeps_logits, masked_loss_sum

    backend = CudaBackend(quantize=False)
    opts = Profile(**{**PROFILE, "lora_keys": ["self_attn.q_proj", "self_attn.v_proj"]})
    torch.manual_seed(0)
    model: Any = get_peft_model(
        backend.load_model(tiny_model, training=True), lora_config(opts, read_shape(tiny_model))
    )
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # non-zero B: every LoRA gradient is non-trivial
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    rows, _ = encode_rows(tok, load_rows(data_dir / "valid.jsonl"), 96)
    batch = Buckets(rows, 3, 0, tok.pad_token_id).micro_batch(0)
    assert 0 < batch.supervised < batch.labels[:, 1:].numel()  # some context is masked
    assert _keeps_logits(model)  # the PEFT-wrapped qwen2 takes the kept-logits path

    def grads(loss: torch.Tensor) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    kept = masked_loss_sum(model, batch)
    kept_grads = grads(kept)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    full = torch.nn.functional.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.shape[-1]),
        batch.labels[:, 1:].reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    full_grads = grads(full)
    assert kept.item() == pytest.approx(full.item(), rel=1e-5)
    assert kept_grads.keys() == full_grads.keys() and kept_grads
    for name, g in kept_grads.items():
        assert torch.allclose(g, full_grads[name], atol=1e-6), name


@pytest.mark.slow
def test_a_run_starts_from_the_init_adapter_in_either_format(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    """`init_adapter` (the active version) is where training starts: PEFT or mlx-lm files."""
    import shutil
    from dataclasses import replace

    backend = CudaBackend(quantize=False)
    first = backend.train(
        _spec(tiny_model, data_dir, tmp_path / "first", max_steps=4, eval_every=2),
        lambda p: None,
        lambda: False,
    )
    mlx_only = tmp_path / "mlx-only"  # a version folder as the MLX backend writes it
    mlx_only.mkdir()
    for name in ("adapters.safetensors", "adapter_config.json"):
        shutil.copy(tmp_path / "first" / name, mlx_only / name)
    for init in (tmp_path / "first", mlx_only):
        spec = _spec(tiny_model, data_dir, tmp_path / f"from-{init.name}", max_steps=1)
        result = backend.train(replace(spec, init_adapter=str(init)), lambda p: None, lambda: False)
        assert f"started from the weights of {init}" in result.notes
        assert result.metrics["initial_val_loss"] == pytest.approx(
            first.metrics["best_val_loss"], abs=1e-4
        )
        assert not (tmp_path / f"from-{init.name}" / "init-adapter").exists()
    fresh = backend.train(
        _spec(tiny_model, data_dir, tmp_path / "fresh", max_steps=1), lambda p: None, lambda: False
    )
    assert fresh.metrics["initial_val_loss"] > first.metrics["best_val_loss"] + 1e-3
