"""MLX DPO stage: pair loading and masking, the margin growing, reload, re-run, cancel and NaN."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from backends.mlx import MLXBackend
from backends.mlx_dpo import encode_pairs, load_pairs, preference_margin
from sam_brain.config import Profile
from sam_brain.errors import BadRequest
from sam_brain.protocols import Progress, TrainResult, TrainSpec

WORDS = ["apple", "river", "stone", "cloud", "maple", "tiger", "ocean", "piano"]
PROFILE = asdict(
    Profile(
        lora_rank=4,
        lora_alpha=8.0,
        lora_keys=["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
        num_layers=-1,
        batch_size=2,
        grad_accum=1,
        max_seq_length=96,
        learning_rate=1e-2,
        max_steps=2,
        eval_every=2,
        save_every=2,
    )
)
PAIRS = [
    {
        "prompt": [{"role": "user", "content": f"Which word is number {i}?"}],
        "chosen": f"The word is {w}.",
        "rejected": "I refuse to answer that question.",
    }
    for i, w in enumerate(WORDS)
]


def _sft_row(i: int) -> str:
    messages = [
        {"role": "user", "content": f"Which word is number {i}?"},
        {"role": "assistant", "content": f"The word is {WORDS[i % len(WORDS)]}."},
    ]
    return json.dumps({"messages": messages}) + "\n"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("dpo_data")
    (data / "train.jsonl").write_text("".join(_sft_row(i) for i in range(8)))
    (data / "valid.jsonl").write_text("".join(_sft_row(i) for i in (8, 9)))
    (data / "preference.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return data


def _train(
    settings: dict[str, Any], model: Path, data: Path, out: Path, cancel_in_dpo: bool = False
) -> tuple[TrainResult, list[Progress]]:
    reports: list[Progress] = []
    spec = TrainSpec(out.name, str(model), str(data), str(out), {**PROFILE, **settings}, seed=0)
    backend = MLXBackend()

    def cancelled() -> bool:  # turns true once the DPO stage has taken its first step
        return cancel_in_dpo and any(r.message.startswith("dpo") for r in reports)

    return backend.train(spec, reports.append, cancelled), reports


def _reloaded_margin(model: Path, adapter_dir: Path) -> float:
    from mlx_lm import load

    loaded, tokenizer = load(str(model), adapter_path=str(adapter_dir))[:2]
    return preference_margin(loaded, encode_pairs(tokenizer, PAIRS, 96))


def _tensors(path: Path) -> dict[str, Any]:
    import mlx.core as mx

    loaded = mx.load(str(path))
    assert isinstance(loaded, dict)
    return loaded


def _same(a: Path, b: Path) -> bool:
    import mlx.core as mx

    x, y = _tensors(a), _tensors(b)
    return x.keys() == y.keys() and all(mx.array_equal(x[k], y[k]).item() for k in x)


# ---------------------------------------------------------------------------------------------
# Fast: reading and encoding pairs


def test_load_pairs_reads_rows_and_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "preference.jsonl"
    assert load_pairs(path) == []
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n")
    assert load_pairs(path) == PAIRS[:2]
    path.write_text(json.dumps(PAIRS[0]) + "\n" + json.dumps({"prompt": "hi", "chosen": "a"}))
    with pytest.raises(BadRequest, match=r"preference.jsonl:2: expected"):
        load_pairs(path)
    path.write_text("{not json\n")
    with pytest.raises(BadRequest, match=r"preference.jsonl:1: not JSON"):
        load_pairs(path)


def test_encode_pairs_supervises_exactly_the_answers(tiny_model: Path) -> None:
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    tokenizer = load_tokenizer(tiny_model)
    [(c_ids, c_mask, r_ids, r_mask)] = encode_pairs(tokenizer, PAIRS[:1], 96)
    assert tokenizer.decode([t for t, m in zip(c_ids, c_mask, strict=True) if m]) == (
        "The word is apple.<|im_end|>"
    )
    assert tokenizer.decode([t for t, m in zip(r_ids, r_mask, strict=True) if m]) == (
        "I refuse to answer that question.<|im_end|>"
    )
    prompt = c_mask.index(1)
    assert c_ids[:prompt] == r_ids[:prompt] and not any(r_mask[:prompt])
    # A limit that cuts every answer off entirely drops the pair rather than training on nothing.
    assert encode_pairs(tokenizer, PAIRS[:1], prompt) == []


# ---------------------------------------------------------------------------------------------
# Slow: the stage inside MLXBackend.train


@pytest.mark.slow
def test_dpo_grows_the_margin_and_the_adapter_reloads(
    tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    settings = {"dpo_learning_rate": 5e-3, "dpo_max_steps": 6}
    result, reports = _train(settings, tiny_model, data_dir, tmp_path / "out")
    m = result.metrics
    dpo = [r for r in reports if r.message.startswith("dpo")]
    assert [r.step for r in dpo] == [1, 2, 3, 4, 5, 6] and {r.total_steps for r in dpo} == {6}
    # The policy starts equal to the frozen reference: the first loss is -log sigmoid(0).
    assert dpo[0].train_loss == pytest.approx(math.log(2), abs=1e-5)
    assert result.steps == 2 and m["dpo_steps"] == 6
    assert m["dpo_margin_after"] > m["dpo_margin_before"] + 1.0
    assert "dpo: 8 pairs, 6 steps, beta 0.1" in result.notes
    out = tmp_path / "out"
    assert not _same(out / "adapters.safetensors", out / "checkpoint" / "sft_best.safetensors")
    assert _reloaded_margin(tiny_model, out) == pytest.approx(m["dpo_margin_after"], abs=1e-3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["dpo_margin_after"] == m["dpo_margin_after"]
    # A repeated run resumes SFT as finished and starts DPO from the SFT adapter again.
    again, _ = _train(settings, tiny_model, data_dir, out)
    assert again.metrics["dpo_margin_before"] == pytest.approx(m["dpo_margin_before"], abs=1e-4)
    assert again.metrics["dpo_margin_after"] == pytest.approx(m["dpo_margin_after"], abs=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["cancelled", "nan"])
def test_cancelled_or_diverged_dpo_keeps_the_sft_adapter(
    case: str, tiny_model: Path, data_dir: Path, tmp_path: Path
) -> None:
    lr = float("nan") if case == "nan" else 5e-3
    settings = {"dpo_learning_rate": lr, "dpo_max_steps": 4}
    out = tmp_path / "out"
    result, reports = _train(settings, tiny_model, data_dir, out, cancel_in_dpo=case == "cancelled")
    m = result.metrics
    assert "dpo: cancelled or diverged; the SFT adapter is kept" in result.notes
    losses = [r.train_loss or 0.0 for r in reports if r.message.startswith("dpo")]
    if case == "cancelled":
        assert m["dpo_steps"] == 1 and math.isfinite(m["dpo_margin_after"])
    else:  # the NaN update shows in the second loss, and the stage stops there
        assert m["dpo_steps"] == 2 and math.isnan(m["dpo_margin_after"])
        assert losses[0] == pytest.approx(math.log(2), abs=1e-5)
    assert len(losses) == m["dpo_steps"] and all(map(math.isfinite, losses[:-1]))
    assert _same(out / "adapters.safetensors", out / "checkpoint" / "sft_best.safetensors")
    assert _reloaded_margin(tiny_model, out) == pytest.approx(m["dpo_margin_before"], abs=1e-3)
