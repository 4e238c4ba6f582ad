"""Adapter conversions: mlx-lm -> PEFT -> mlx-lm is bit-exact, for float32 and bf16 tensors.

The logits check (a trained PEFT adapter gives the same logits in mlx-lm as in transformers) lives
in `test_cuda.py`, next to the training it needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from backends.adapter_format import (
    RawTensor,
    mlx_to_peft,
    peft_target_modules,
    peft_to_mlx,
    read_safetensors,
    write_safetensors,
)
from sam_brain.errors import BadRequest


def _mlx_adapter(directory: Path, base: Path, dtype: str) -> dict[str, RawTensor]:
    """A hand-made mlx-lm adapter on the last 2 of 4 layers with random values."""
    rng = np.random.default_rng(1)
    dims = {"self_attn.q_proj": (128, 128), "mlp.down_proj": (384, 128)}
    tensors = {}
    for layer in (2, 3):
        for key, (n_in, n_out) in dims.items():
            for name, shape in (("lora_a", (n_in, 4)), ("lora_b", (4, n_out))):
                values = rng.normal(size=shape).astype(np.float32)
                raw = values.view(np.uint32) >> 16 if dtype == "BF16" else values.view(np.uint32)
                data = raw.astype(np.uint16 if dtype == "BF16" else np.uint32)
                tensors[f"model.layers.{layer}.{key}.{name}"] = RawTensor(
                    dtype, data.view(f"V{data.itemsize}")
                )
    write_safetensors(directory / "adapters.safetensors", tensors, {})
    config = {
        "fine_tune_type": "lora",
        "num_layers": 2,
        "model": str(base),
        "lora_parameters": {"rank": 4, "scale": 2.5, "dropout": 0.0, "keys": sorted(dims)},
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return tensors


@pytest.mark.parametrize("dtype", ["F32", "BF16"])
def test_mlx_to_peft_to_mlx_round_trip_is_identical(
    tiny_model: Path, tmp_path: Path, dtype: str
) -> None:
    (tmp_path / "mlx").mkdir()
    original = _mlx_adapter(tmp_path / "mlx", tiny_model, dtype)
    mlx_to_peft(tmp_path / "mlx", tmp_path / "peft", str(tiny_model))
    peft_cfg = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (peft_cfg["r"], peft_cfg["lora_alpha"]) == (4, 10.0)
    assert peft_cfg["layers_to_transform"] == [2, 3]
    assert sorted(peft_cfg["target_modules"]) == ["down_proj", "q_proj"]
    peft_tensors, _ = read_safetensors(tmp_path / "peft" / "adapter_model.safetensors")
    a = peft_tensors["base_model.model.model.layers.2.mlp.down_proj.lora_A.weight"]
    assert a.data.shape == (4, 384)

    peft_to_mlx(tmp_path / "peft", tmp_path / "back")
    back, _ = read_safetensors(tmp_path / "back" / "adapters.safetensors")
    assert back.keys() == original.keys()
    for key, tensor in original.items():
        assert back[key].dtype == dtype and back[key].data.shape == tensor.data.shape
        assert back[key].data.tobytes() == tensor.data.tobytes()
    config = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert config["num_layers"] == 2 and config["fine_tune_type"] == "lora"
    assert config["lora_parameters"] == {
        "rank": 4,
        "scale": 2.5,
        "dropout": 0.0,
        "keys": ["mlp.down_proj", "self_attn.q_proj"],
    }


def test_target_modules_are_short_only_when_unambiguous() -> None:
    names = [
        "model.layers.0.self_attn.q_proj",
        "model.layers.0.cross.q_proj",
        "model.layers.0.mlp.up",
    ]
    assert peft_target_modules(["self_attn.q_proj", "mlp.up"]) == ["q_proj", "up"]
    assert peft_target_modules(["self_attn.q_proj", "mlp.up"], names) == ["self_attn.q_proj", "up"]
    assert peft_target_modules(["a.q_proj", "b.q_proj"]) == ["a.q_proj", "b.q_proj"]


def test_dora_and_foreign_tensors_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    (tmp_path / "mlx").mkdir()
    _mlx_adapter(tmp_path / "mlx", tiny_model, "F32")
    config = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    (tmp_path / "mlx" / "adapter_config.json").write_text(
        json.dumps({**config, "fine_tune_type": "dora"})
    )
    with pytest.raises(BadRequest, match="only LoRA"):
        mlx_to_peft(tmp_path / "mlx", tmp_path / "peft", str(tiny_model))
    (tmp_path / "peft").mkdir()
    (tmp_path / "peft" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8}))
    blob = {"base_model.model.lm_head.weight": RawTensor("F32", np.zeros((2, 2), "V4"))}
    write_safetensors(tmp_path / "peft" / "adapter_model.safetensors", blob, {})
    with pytest.raises(BadRequest, match="not a LoRA A/B matrix"):
        peft_to_mlx(tmp_path / "peft", tmp_path / "back")
