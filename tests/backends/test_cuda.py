"""CUDA backend on the CPU: real 4-bit QLoRA on the tiny model, resume, cancel, NaN, DPO, DDP.

bitsandbytes 0.50 runs NF4 forward and backward on the CPU, so the 4-bit path itself is
trained here, not a stand-in. The adapter conversions are checked both ways, and a trained PEFT
adapter converted to mlx-lm's format must give the same logits in mlx-lm as in transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from backends.cuda import CudaBackend
from backends.cuda_loop import Buckets, evaluate, rank_batches, train_step
from backends.cuda_options import check_options, lora_config, read_shape
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable, TrainingFailed
from sam_brain.masking import encode_rows, load_rows
from sam_brain.protocols import Progress, TrainSpec

REPO = Path(__file__).resolve().parents[2]
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
    for part in ("'self_attn.qq_proj'", "num_layers: 9", "fancy: not an option"):
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
    backend = CudaBackend(dpo_learning_rate=5e-3, dpo_max_steps=6)
    result = backend.train(
        _spec(tiny_model, data, tmp_path / "out", max_steps=2), reports.append, lambda: False
    )
    m = result.metrics
    assert m["dpo_steps"] == 6 and m["dpo_margin_after"] > m["dpo_margin_before"] + 1.0
    assert sum(r.message.startswith("dpo") for r in reports) == 6
    assert any(n.startswith("dpo: 8 pairs, 6 steps") for n in result.notes)
    sft = _lora(tmp_path / "out" / "checkpoint" / "sft_best.safetensors")
    final = _lora(tmp_path / "out" / "peft" / "adapter_model.safetensors")
    assert all(final[k].dtype == torch.float32 for k in final)
    assert any(not torch.equal(sft[k], final[k]) for k in sft)


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from safetensors.torch import save_file
torch.set_num_threads(1)
rank, (init, base, out, repo) = int(sys.argv[1]), sys.argv[2:]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
sys.path.insert(0, repo)
from tests.backends.test_cuda import ddp_steps
weights = ddp_steps(base, world=2)
save_file(weights, f"{out}/rank{rank}.safetensors")
dist.destroy_process_group()
"""


def ddp_steps(base: str, world: int) -> dict[str, torch.Tensor]:
    """Two optimizer steps of `train_step` (wrapped in DDP when `world` > 1); the LoRA weights."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoTokenizer

    backend = CudaBackend(quantize=True)
    shape = read_shape(Path(base))
    opts, _ = check_options({**PROFILE, "lora_keys": KEYS[:2]}, shape, 3)
    torch.manual_seed(0)
    model = get_peft_model(backend.load_model(Path(base), training=True), lora_config(opts, shape))
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    params = [p for p in model.parameters() if p.requires_grad]
    # Plain SGD: the update is linear in the gradient, so any mis-scaling across ranks shows.
    optimizer = torch.optim.SGD(params, lr=5.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tok = AutoTokenizer.from_pretrained(base)
    # Answers of very different lengths, so the ranks see different token counts.
    talks = [
        [
            {"role": "user", "content": f"Say {w} {n} times."},
            {"role": "assistant", "content": " ".join([w] * n)},
        ]
        for n, w in zip((1, 9, 2, 14, 3, 6, 1, 11), WORDS, strict=True)
    ]
    rows, _ = encode_rows(tok, talks, 128)
    buckets = Buckets(rows, 1, 0, tok.pad_token_id)
    micro = 0
    for _ in range(2):
        batches, used = rank_batches(buckets, micro, 4 // world)
        micro += used
        train_step(wrapped, optimizer, scheduler, batches)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.slow
def test_ddp_on_gloo_keeps_ranks_identical_and_equal_to_one_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [init, str(tiny_model), str(tmp_path), str(REPO)]
    procs = [
        subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(rank), *args], env=env)
        for rank in (0, 1)
    ]
    single = ddp_steps(str(tiny_model), world=1)  # while the ranks start up
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rank0 = _lora(tmp_path / "rank0.safetensors")
    rank1 = _lora(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key])
        # Token-weighted scaling: two ranks of 2 micro-batches equal one process of 4.
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-6)
    assert all(w.abs().max() > 1e-3 for k, w in rank0.items() if "lora_B" in k)


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
