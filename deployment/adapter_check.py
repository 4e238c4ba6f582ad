"""Check an adapter folder against the base model before anything registers or serves it.

Registration only copied files, so 4 KB of random bytes named `adapters.safetensors` next to `{}`
became a canary. `check_adapter` reads what the files claim and compares it with the base: the
safetensors header parses and its offsets tile the file, every tensor is a float type with
finite values, each LoRA pair sits on a module the base has (its weight names, read from the
base's own safetensors headers, so no model is loaded) with shapes matching that module's
dimensions and the configured rank, and the config names the base the adapter was trained on.
Both layouts are checked: mlx-lm's at the folder's top and PEFT's (top or `peft/`), see
`backends/adapter_format.py`. Any problem raises `AdapterInvalid` with one line naming it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam_brain.errors import BadRequest
from sam_brain.hub import base_fingerprint

MLX_WEIGHTS, PEFT_WEIGHTS, CONFIG = (
    "adapters.safetensors",
    "adapter_model.safetensors",
    "adapter_config.json",
)
FLOATS = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": None}
_ITEM = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1}
_MLX_KEY = re.compile(r"^(?P<module>.+)\.(?P<part>lora_a|lora_b|m)$")
_PEFT_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_BLOCK = re.compile(r"^.*?\.(?P<index>\d+)\.(?P<key>.+)$")
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the header size


class AdapterInvalid(BadRequest):
    """An adapter's files do not describe a LoRA adapter of the configured base model."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    data: bytes


def read_tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file, after checking the header against the file's size.

    Raises:
        AdapterInvalid: The file is not a well-formed safetensors file.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise AdapterInvalid(f"{path}: cannot read: {err.strerror or err}") from err
    if len(raw) < 8:
        raise AdapterInvalid(f"{path}: {len(raw)} bytes, too short for a safetensors header")
    size = int.from_bytes(raw[:8], "little")
    if size > min(MAX_HEADER, len(raw) - 8):
        raise AdapterInvalid(
            f"{path}: not a safetensors file (header length {size} exceeds the file's"
            f" {len(raw)} bytes)"
        )
    try:
        header = json.loads(raw[8 : 8 + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise AdapterInvalid(f"{path}: the safetensors header is not JSON ({err})") from err
    if not isinstance(header, dict):
        raise AdapterInvalid(f"{path}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    body = raw[8 + size :]
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype, shape = str(info["dtype"]), tuple(int(d) for d in info["shape"])
            start, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise AdapterInvalid(f"{path}: tensor {name!r} has a malformed header entry") from err
        if dtype not in _ITEM:
            raise AdapterInvalid(f"{path}: tensor {name!r} has unknown dtype {dtype}")
        if not 0 <= start <= end <= len(body) or end - start != math.prod(shape) * _ITEM[dtype]:
            raise AdapterInvalid(
                f"{path}: tensor {name!r} offsets {start}..{end} do not fit its shape {list(shape)}"
                f" and the file's {len(body)} data bytes"
            )
        spans.append((start, end))
        tensors[name] = Tensor(name, dtype, shape, body[start:end])
    if not tensors:
        raise AdapterInvalid(f"{path}: holds no tensors")
    covered = 0
    for start, end in sorted(spans):  # the data must be exactly the tensors, none overlapping
        if start != covered:
            raise AdapterInvalid(f"{path}: tensor data overlaps or leaves a gap at byte {start}")
        covered = end
    if covered != len(body):
        raise AdapterInvalid(f"{path}: {len(body) - covered} bytes after the last tensor")
    return tensors


def values(t: Tensor) -> np.ndarray:
    """The tensor's values as float32/float64 (bf16 widened), for the finiteness check."""
    if t.dtype == "BF16":
        return (np.frombuffer(t.data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(t.data, dtype=np.dtype(FLOATS[t.dtype]).newbyteorder("<"))


@dataclass(frozen=True)
class BaseShapes:
    """The base model's linear modules as `name -> (out_features, in_features)`."""

    modules: dict[str, tuple[int, int]]
    layers: int

    @classmethod
    def read(cls, base_dir: Path) -> BaseShapes:
        """From the base's config.json and safetensors headers (nothing is loaded)."""
        try:
            config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise AdapterInvalid(f"base model {base_dir}: no readable config.json") from err
        bits = int((config.get("quantization") or {}).get("bits") or 0)
        text = config.get("text_config") or {}
        layers = int(config.get("num_hidden_layers", text.get("num_hidden_layers", 0)) or 0)
        modules: dict[str, tuple[int, int]] = {}
        for file in sorted(base_dir.glob("*.safetensors")):
            for name, (dtype, shape) in _header(file).items():
                if name.endswith(".weight") and len(shape) == 2:
                    out, inp = shape
                    # mlx quantized weights pack 32 // bits values per uint32 column
                    packed = bits and dtype == "U32"
                    modules[name[: -len(".weight")]] = (out, inp * 32 // bits if packed else inp)
        if not modules:
            raise AdapterInvalid(f"base model {base_dir}: no safetensors weights to check against")
        return cls(modules, layers)

    def find(self, module: str) -> tuple[int, int] | None:
        """Shapes of `module`, also when the base's names carry a prefix the adapter omits."""
        if module in self.modules:
            return self.modules[module]
        hits = [v for k, v in self.modules.items() if k.endswith("." + module)]
        return hits[0] if len(hits) == 1 else None


def _header(path: Path) -> dict[str, tuple[str, list[int]]]:
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}


def check_adapter(adapter_dir: Path, base_dir: Path | str, base_ref: str = "") -> list[str]:
    """Check every adapter layout in `adapter_dir`; returns the layouts checked ("mlx", "peft").

    Raises:
        AdapterInvalid: The first problem found, in one line.
    """
    base = Path(base_dir).expanduser()
    shapes = BaseShapes.read(base)
    checked = []
    if (adapter_dir / MLX_WEIGHTS).exists() or not _peft_dirs(adapter_dir):
        _check_mlx(adapter_dir, shapes)
        _check_base_named(adapter_dir, "model", base, base_ref)
        checked.append("mlx")
    for d in _peft_dirs(adapter_dir):
        _check_peft(d, shapes)
        _check_base_named(d, "base_model_name_or_path", base, base_ref)
        checked.append("peft")
    return checked


def _peft_dirs(adapter_dir: Path) -> list[Path]:
    return [d for d in (adapter_dir, adapter_dir / "peft") if (d / PEFT_WEIGHTS).exists()]


def _config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AdapterInvalid(f"{folder}: no readable {CONFIG}") from err
    except ValueError as err:
        raise AdapterInvalid(f"{path}: not JSON ({err})") from err
    if not isinstance(config, dict):
        raise AdapterInvalid(f"{path}: not a JSON object")
    return config


def _positive_int(value: Any, what: str, path: Path) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise AdapterInvalid(f"{path}: {what} must be a positive integer, got {value!r}")
    return value


def _check_mlx(folder: Path, shapes: BaseShapes) -> None:
    tensors = read_tensors(folder / MLX_WEIGHTS)
    config = _config(folder)
    path = folder / CONFIG
    kind = config.get("fine_tune_type", "lora")
    if kind not in ("lora", "dora"):
        raise AdapterInvalid(f"{path}: fine_tune_type {kind!r} is not a LoRA adapter")
    params = config.get("lora_parameters")
    if not isinstance(params, dict):
        raise AdapterInvalid(f"{path}: no lora_parameters (rank, scale, keys)")
    rank = _positive_int(params.get("rank"), "lora_parameters.rank", path)
    scale = params.get("scale")
    if not isinstance(scale, int | float) or not math.isfinite(scale):
        raise AdapterInvalid(f"{path}: lora_parameters.scale must be a finite number")
    keys = params.get("keys")
    pairs: dict[str, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        m = _MLX_KEY.match(name)
        if m is None or (m["part"] == "m" and kind != "dora"):
            raise AdapterInvalid(f"{folder / MLX_WEIGHTS}: tensor {name!r} is not a LoRA matrix")
        pairs.setdefault(m["module"], {})[m["part"]] = t
    for module, parts in pairs.items():
        out, inp = _module(folder / MLX_WEIGHTS, module, shapes, keys)
        expect = {"lora_a": (inp, rank), "lora_b": (rank, out), "m": (out,)}
        _check_pair(folder / MLX_WEIGHTS, module, parts, expect, ("lora_a", "lora_b"))


def _check_peft(folder: Path, shapes: BaseShapes) -> None:
    tensors = read_tensors(folder / PEFT_WEIGHTS)
    config = _config(folder)
    path = folder / CONFIG
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise AdapterInvalid(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    rank = _positive_int(config.get("r"), "r", path)
    ranks = config.get("rank_pattern") or {}
    pairs: dict[str, dict[str, Tensor]] = {}
    for name, t in tensors.items():
        m = _PEFT_KEY.match(name)
        if m is None:
            raise AdapterInvalid(f"{folder / PEFT_WEIGHTS}: tensor {name!r} is not a LoRA matrix")
        pairs.setdefault(m["module"], {})[m["part"]] = t
    for module, parts in pairs.items():
        out, inp = _module(folder / PEFT_WEIGHTS, module, shapes, None)
        r = next((int(v) for k, v in ranks.items() if module.endswith(k)), rank)
        _check_pair(
            folder / PEFT_WEIGHTS, module, parts, {"A": (r, inp), "B": (out, r)}, ("A", "B")
        )


def _module(path: Path, module: str, shapes: BaseShapes, keys: Any) -> tuple[int, int]:
    found = shapes.find(module)
    if found is None:
        raise AdapterInvalid(f"{path}: {module!r} is not a linear module of the base model")
    block = _BLOCK.match(module)
    if block and shapes.layers and int(block["index"]) >= shapes.layers:
        raise AdapterInvalid(f"{path}: {module!r} is past the base's {shapes.layers} layers")
    if isinstance(keys, list) and keys and block and block["key"] not in keys:
        raise AdapterInvalid(f"{path}: {module!r} is not among lora_parameters.keys {keys}")
    return found


def _check_pair(
    path: Path,
    module: str,
    parts: dict[str, Tensor],
    expect: dict[str, tuple[int, ...]],
    required: tuple[str, str],
) -> None:
    missing = [p for p in required if p not in parts]
    if missing:
        raise AdapterInvalid(f"{path}: {module} lacks its {' and '.join(missing)} matrix")
    for part, t in parts.items():
        if t.dtype not in FLOATS:
            raise AdapterInvalid(f"{path}: {t.name} has dtype {t.dtype}, not a float type")
        if t.shape != expect[part]:
            raise AdapterInvalid(
                f"{path}: {t.name} has shape {list(t.shape)}, the base and rank need"
                f" {list(expect[part])}"
            )
        bad = int(np.count_nonzero(~np.isfinite(values(t))))
        if bad:
            raise AdapterInvalid(f"{path}: {t.name} holds {bad} non-finite values (NaN/inf)")


def _check_base_named(folder: Path, field: str, base: Path, base_ref: str) -> None:
    """The config must name the base it was trained on, and that must be our base."""
    named = _config(folder).get(field)
    if not isinstance(named, str) or not named:
        raise AdapterInvalid(f"{folder / CONFIG}: does not name its base model ({field!r})")
    known = {base_ref, str(base), str(base.resolve())} - {""}
    if named in known:
        return
    other = Path(named).expanduser()
    # The same weights under another path (a moved cache, another checkout) are the same base.
    if other.is_dir() and _fingerprint(other) == _fingerprint(base):
        return
    raise AdapterInvalid(
        f"{folder / CONFIG}: trained on {named}, not on the configured base model"
        f" {base_ref or base}"
    )


def _fingerprint(path: Path) -> str:
    try:
        return base_fingerprint(str(path))
    except Exception:  # an unreadable folder is simply not our base
        return f"unreadable:{path}"
