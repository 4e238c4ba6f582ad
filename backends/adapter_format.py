"""Convert LoRA adapters between PEFT's format and mlx-lm's, in both directions, losslessly.

PEFT stores `adapter_model.safetensors` with keys `base_model.model.<module>.lora_A.weight`
(shape `(r, in)`) and `lora_B.weight` (`(out, r)`) next to an `adapter_config.json` holding `r`,
`lora_alpha`, `target_modules` and `layers_to_transform`. mlx-lm stores `adapters.safetensors`
with keys `<module>.lora_a` (`(in, r)`) and `lora_b` (`(r, out)`), the transposes, next to an
`adapter_config.json` holding `lora_parameters: {rank, scale, dropout, keys}` and `num_layers`
(adapters on the last N blocks). The update is the same: PEFT scales by `lora_alpha / r`, mlx-lm
by `scale`, so `lora_alpha = scale * r`. Tensors are moved as raw bytes (transposed element
records), so any dtype converts bit-exactly, bf16 included, which numpy cannot represent; the
module imports neither torch nor mlx, so either side can use it. A backend's adapter directory
holds the mlx-lm files at its top (what the version registry and `mlx_lm.load` read) and the
PEFT files in `peft/` (`save_adapter` writes both; `peft_files` finds or makes the PEFT ones).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam_brain.errors import BadRequest, NotFound
from sam_brain.fsutil import atomic_file, write_text_atomic

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_DIR = "peft"  # where a backend keeps the PEFT copy of its adapter
MLX_WEIGHTS = "adapters.safetensors"
CONFIG = "adapter_config.json"
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
_MLX_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[ab])$")
_LAYER = re.compile(r"^(?P<stack>.*?)(?P<pattern>[A-Za-z_]+)\.(?P<index>\d+)\.(?P<key>.+)$")
_ITEM_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


@dataclass
class RawTensor:
    """A tensor as safetensors stores it: a dtype name and its elements as opaque records."""

    dtype: str
    data: np.ndarray  # dtype `V<itemsize>`, in the tensor's shape


def peft_to_mlx(
    src_dir: Path | str, dst_dir: Path | str, base_model_path: str | None = None
) -> None:
    """Write mlx-lm's `adapters.safetensors` + `adapter_config.json` from a PEFT LoRA adapter.

    Args:
        src_dir: Directory with PEFT's `adapter_model.safetensors` and `adapter_config.json`.
        dst_dir: Directory to write the mlx-lm files into (created if missing).
        base_model_path: Local base model directory, needed to count its layers when the adapter
            covers only some of them; defaults to the config's `base_model_name_or_path`.

    Raises:
        BadRequest: The adapter is not plain LoRA on linear layers (DoRA, biases, embeddings),
            or its layers are not countable.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    config = _read_json(src / CONFIG)
    if str(config.get("peft_type", "LORA")).upper() != "LORA" or config.get("use_dora"):
        raise BadRequest(f"{src}: only plain LoRA adapters convert to mlx-lm (not DoRA/other)")
    tensors, _ = read_safetensors(src / PEFT_WEIGHTS)
    out: dict[str, RawTensor] = {}
    keys: set[str] = set()
    layers: set[int] = set()
    for name, tensor in tensors.items():
        match = _PEFT_KEY.match(name)
        if match is None:
            raise BadRequest(f"{src}: tensor {name!r} is not a LoRA A/B matrix")
        module = match["module"]
        layer = _LAYER.match(module)
        if layer is None:
            raise BadRequest(f"{src}: {module!r} is not inside a numbered transformer block")
        keys.add(layer["key"])
        layers.add(int(layer["index"]))
        out[f"{module}.lora_{match['ab'].lower()}"] = RawTensor(tensor.dtype, tensor.data.T)
    rank = int(config["r"])
    alpha = float(config["lora_alpha"])
    scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
    num_layers = -1
    if config.get("layers_to_transform") is not None:
        total = count_layers(base_model_path or str(config.get("base_model_name_or_path") or ""))
        num_layers = total - min(layers, default=total)
    mlx_config = {
        "fine_tune_type": "lora",
        "model": base_model_path or config.get("base_model_name_or_path"),
        "num_layers": num_layers,
        "lora_parameters": {
            "rank": rank,
            "scale": scale,
            "dropout": float(config.get("lora_dropout") or 0.0),
            "keys": sorted(keys),
        },
    }
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(dst / MLX_WEIGHTS, out, {"format": "mlx"})
    write_text_atomic(dst / CONFIG, json.dumps(mlx_config, indent=2, sort_keys=True) + "\n")


def mlx_to_peft(src_dir: Path | str, dst_dir: Path | str, base_model_path: str) -> None:
    """Write PEFT's `adapter_model.safetensors` + `adapter_config.json` from an mlx-lm adapter.

    Args:
        src_dir: Directory with mlx-lm's `adapters.safetensors` and `adapter_config.json`.
        dst_dir: Directory to write the PEFT files into (created if missing).
        base_model_path: The base model (recorded in the config; its layer count turns
            `num_layers` into `layers_to_transform`).

    Raises:
        BadRequest: The adapter is not LoRA (DoRA, full fine-tune) or holds unknown tensors.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    config = _read_json(src / CONFIG)
    if config.get("fine_tune_type", "lora") != "lora":
        raise BadRequest(
            f"{src}: only LoRA adapters convert to PEFT, not {config['fine_tune_type']}"
        )
    params = config.get("lora_parameters") or {}
    tensors, _ = read_safetensors(src / MLX_WEIGHTS)
    out: dict[str, RawTensor] = {}
    keys: set[str] = set()
    pattern = "layers"
    for name, tensor in tensors.items():
        match = _MLX_KEY.match(name)
        layer = _LAYER.match(match["module"]) if match else None
        if match is None or layer is None:
            raise BadRequest(f"{src}: tensor {name!r} is not a LoRA matrix inside a block")
        keys.add(layer["key"])
        pattern = layer["pattern"]
        out[f"base_model.model.{match['module']}.lora_{match['ab'].upper()}.weight"] = RawTensor(
            tensor.dtype, tensor.data.T
        )
    keys |= set(params.get("keys") or [])
    rank = int(params["rank"])
    total = count_layers(base_model_path)
    num_layers = int(config.get("num_layers", -1))
    layers = (
        None if num_layers <= 0 or num_layers >= total else list(range(total - num_layers, total))
    )
    peft_config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_path),
        "r": rank,
        "lora_alpha": float(params["scale"]) * rank,
        "lora_dropout": float(params.get("dropout", 0.0)),
        "target_modules": peft_target_modules(sorted(keys)),
        "layers_to_transform": layers,
        "layers_pattern": pattern if layers is not None else None,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "init_lora_weights": True,
    }
    dst.mkdir(parents=True, exist_ok=True)
    write_safetensors(dst / PEFT_WEIGHTS, out, {"format": "pt"})
    write_text_atomic(dst / CONFIG, json.dumps(peft_config, indent=2, sort_keys=True) + "\n")


def save_adapter(model: Any, out: Path, base: Path) -> None:
    """Write a PEFT model's "default" adapter as PEFT files in `out/peft/` and mlx-lm files in
    `out/` (each file replaced atomically)."""
    peft_dir = out / PEFT_DIR
    peft_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        model.save_pretrained(tmp, selected_adapters=["default"])
        for name in (PEFT_WEIGHTS, CONFIG):
            os.replace(Path(tmp) / name, peft_dir / name)
    peft_to_mlx(peft_dir, out, str(base))


def peft_files(adapter: Path, base: Path, scratch: Path) -> Path:
    """The directory holding PEFT files for an adapter: its `peft/`, itself, or `scratch` with
    a conversion of its mlx-lm files.

    Raises:
        NotFound: Neither format is there.
    """
    for candidate in (adapter / PEFT_DIR, adapter):
        if (candidate / PEFT_WEIGHTS).exists():
            return candidate
    if (adapter / MLX_WEIGHTS).exists():
        mlx_to_peft(adapter, scratch, str(base))
        return scratch
    raise NotFound(f"no adapter files in {adapter}")


def peft_target_modules(keys: list[str], module_names: list[str] | None = None) -> list[str]:
    """PEFT `target_modules` for block-relative keys such as `self_attn.q_proj`.

    PEFT matches names by suffix, so each key becomes its last component (`q_proj`) when that
    selects exactly the same modules; otherwise the full key is kept.

    Args:
        keys: Block-relative module paths (mlx-lm's `lora_parameters.keys`).
        module_names: Every module name of the model, when known, to check that the short name
            matches nothing else; without it only collisions between the keys are checked.
    """
    shorts = [k.rsplit(".", 1)[-1] for k in keys]
    chosen = []
    for key, short in zip(keys, shorts, strict=True):
        unique = shorts.count(short) == 1
        if unique and module_names is not None:
            hits = [n for n in module_names if n == short or n.endswith("." + short)]
            unique = all(n == key or n.endswith("." + key) for n in hits)
        chosen.append(short if unique else key)
    return chosen


def count_layers(base_model_path: str) -> int:
    """`num_hidden_layers` of a local base model directory.

    Raises:
        BadRequest: No readable `config.json` there.
    """
    config_file = Path(base_model_path).expanduser() / "config.json"
    if not base_model_path or not config_file.exists():
        raise BadRequest(f"cannot count layers: {config_file} does not exist")
    config = _read_json(config_file)
    text = config.get("text_config") or {}
    layers = config.get("num_hidden_layers", text.get("num_hidden_layers"))
    if not isinstance(layers, int):
        raise BadRequest(f"{config_file}: no num_hidden_layers")
    return layers


def read_safetensors(path: Path) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, dtype-agnostic (see the module docstring).

    Raises:
        BadRequest: The file is missing or malformed.
    """
    try:
        raw = path.read_bytes()
        size = int.from_bytes(raw[:8], "little")
        header: dict[str, Any] = json.loads(raw[8 : 8 + size])
    except (OSError, ValueError) as err:
        raise BadRequest(f"cannot read {path}: {err}") from err
    metadata = header.pop("__metadata__", None) or {}
    body = memoryview(raw)[8 + size :]
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in _ITEM_BYTES:
            raise BadRequest(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        record = np.dtype(f"V{_ITEM_BYTES[info['dtype']]}")
        data = np.frombuffer(body[start:end], dtype=record).reshape(info["shape"])
        tensors[name] = RawTensor(info["dtype"], data)
    return tensors, metadata


def write_safetensors(path: Path, tensors: dict[str, RawTensor], metadata: dict[str, str]) -> None:
    """Write tensors in the safetensors layout (header padded to 8 bytes), atomically."""
    header: dict[str, Any] = {"__metadata__": metadata} if metadata else {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name]
        data = np.ascontiguousarray(tensor.data).tobytes()
        header[name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.data.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    with atomic_file(path) as tmp:
        tmp.write_bytes(len(head).to_bytes(8, "little") + head + b"".join(chunks))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BadRequest(f"cannot read {path}: {err}") from err
    if not isinstance(data, dict):
        raise BadRequest(f"{path}: expected a JSON object")
    return data
