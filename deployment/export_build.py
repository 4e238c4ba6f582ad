"""The artifacts of each export format, built into a stage folder and checked in their runtime.

One builder per format of `deployment.export` writes its files into `job.stage` (scratch work in
`job.work`) and returns the checks of `deployment.verify` it ran; `_fuse` merges the adapter
into the base with mlx-lm for the fused, gguf and ollama formats. export.py decides whether to
build, and puts the stage in place.
"""

from __future__ import annotations

import gc
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deployment import gguf
from deployment.verify import (
    EXACT_F16,
    QUANT_RULES,
    Reference,
    check_gguf,
    check_mlx,
    check_transformers,
    reference,
)
from sam_brain.versions import ADAPTER_FILES


@dataclass
class _Job:
    version: str
    adapter: Path
    base: Path
    stage: Path
    work: Path
    quant: str
    notes: list[str]
    _ref: Reference | None = None
    _hf_base: Path | None = None

    @property
    def ref(self) -> Reference:
        if self._ref is None:
            self._ref = reference(self.base, self.adapter)
        return self._ref

    @property
    def quantized_base(self) -> bool:
        return "quantization" in _read_json(self.base / "config.json")

    def hf_base(self) -> Path:
        """The base as transformers/llama.cpp can load it: dequantized when MLX-quantized."""
        if self._hf_base is None:
            self._hf_base = self.base
            if self.quantized_base:
                from mlx_lm import convert

                self._hf_base = self.work / "base-dequantized"
                convert(str(self.base), str(self._hf_base), dequantize=True)
                self.notes.append(
                    "the base is MLX-quantized; a dequantized copy was used to load the adapter"
                    " outside MLX (apply it to the unquantized original base)"
                )
        return self._hf_base


# Builders: write the artifacts into job.stage (scratch in job.work) and return their checks.


def _build_mlx(job: _Job) -> list[dict[str, Any]]:
    for name in ADAPTER_FILES:
        shutil.copyfile(job.adapter / name, job.stage / name)
    return [check_mlx(job.base, job.stage, job.ref, "adapters.safetensors")]


def _build_peft(job: _Job) -> list[dict[str, Any]]:
    from backends.adapter_format import mlx_to_peft

    mlx_to_peft(job.adapter, job.stage, str(job.base))
    return [check_transformers(job.hf_base(), job.ref, "adapter_model.safetensors", job.stage)]


def _build_fused(job: _Job) -> list[dict[str, Any]]:
    _fuse(job, job.stage)
    return [check_transformers(job.stage, job.ref, "model.safetensors")]


def _build_gguf(job: _Job) -> list[dict[str, Any]]:
    from backends.adapter_format import mlx_to_peft

    checks = _gguf_model(job)
    peft_dir = job.work / "peft"
    mlx_to_peft(job.adapter, peft_dir, str(job.base))
    lora = gguf.convert_lora(peft_dir, job.hf_base(), job.stage / "adapter-f16.gguf")
    base_gguf = gguf.convert_model(job.hf_base(), job.work / "base-f16.gguf", f"{job.version}-base")
    checks.append(check_gguf(base_gguf, job.ref, EXACT_F16, lora=lora))
    job.notes.append(
        "adapter-f16.gguf is the adapter alone: `llama-cli -m <base>.gguf --lora adapter-f16.gguf`"
        " (verified on an f16 GGUF of the base)"
    )
    return checks


def gguf_name(version: str, quant: str) -> str:
    """The quantized model's file: `NAME-vX.Y.Z-QUANT.gguf` for a named training's version
    (`NAME-vX.Y.Z`), so exports of several trainings never mix; `model-QUANT.gguf` otherwise."""
    named = NAMED_VERSION.fullmatch(version)
    return f"{version}-{quant}.gguf" if named else f"model-{quant}.gguf"


NAMED_VERSION = re.compile(r"[a-z0-9][a-z0-9_-]*-v\d+\.\d+\.\d+")


def _build_ollama(job: _Job) -> list[dict[str, Any]]:
    # A non-ChatML base fails fast.
    modelfile = gguf.modelfile(gguf_name(job.version, job.quant), job.base)
    checks = _gguf_model(job)
    (job.stage / "Modelfile").write_text(modelfile, encoding="utf-8")
    checks.append(gguf.check_modelfile(job.stage / "Modelfile"))
    job.notes.append("load it with `ollama create <name> -f Modelfile` run inside this folder")
    return checks


def _gguf_model(job: _Job) -> list[dict[str, Any]]:
    """Fuse, convert to f16 GGUF, verify, then quantize and verify the quantized file."""
    fused = _fuse(job, job.work / "fused")
    f16 = gguf.convert_model(fused, job.work / "model-f16.gguf", f"sam-brain-{job.version}")
    checks = [check_gguf(f16, job.ref, EXACT_F16)]
    if job.quant == "f16":
        shutil.move(f16, job.stage / f16.name)
        return checks
    target = gguf.quantize(f16, job.stage / gguf_name(job.version, job.quant), job.quant)
    checks.append(check_gguf(target, job.ref, QUANT_RULES[job.quant]))
    return checks


def _fuse(job: _Job, dst: Path) -> Path:
    """Merge the adapter into the base with mlx-lm and save a Hugging Face model folder."""
    from mlx.utils import tree_unflatten
    from mlx_lm import load
    from mlx_lm.utils import dequantize_model, load_config, save

    model, tokenizer = load(str(job.base), adapter_path=str(job.adapter))[:2]
    config = load_config(job.base)
    dequantize = job.quantized_base
    fused = [
        (n, m.fuse(dequantize=dequantize)) for n, m in model.named_modules() if hasattr(m, "fuse")
    ]
    model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
        job.notes.append(
            "the base is MLX-quantized: it was dequantized before fusing, so the fused model is"
            " full precision and larger than the base"
        )
    save(dst, str(job.base), model, tokenizer, config, donate_model=False)
    del model
    gc.collect()
    return dst


_BUILDERS: dict[str, Callable[[_Job], list[dict[str, Any]]]] = {
    "mlx": _build_mlx,
    "peft": _build_peft,
    "fused": _build_fused,
    "gguf": _build_gguf,
    "ollama": _build_ollama,
}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
