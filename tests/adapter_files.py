"""Adapter folders made for a test: real safetensors LoRA files that registration accepts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def write_adapter(out: Path, seed: int = 0) -> Path:
    """A real safetensors LoRA adapter (two small matrices), as the registry takes them."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    save_file(
        {
            "model.layers.0.self_attn.q_proj.lora_a": rng.normal(size=(64, 4)).astype(np.float32),
            "model.layers.0.self_attn.q_proj.lora_b": rng.normal(size=(4, 64)).astype(np.float32),
        },
        str(out / "adapters.safetensors"),
    )
    lora = {"rank": 4, "scale": 2.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    config = {"fine_tune_type": "lora", "num_layers": 1, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out
