"""Benchmark exports: generation speed of the Q4_K_M GGUF in llama.cpp vs the MLX adapter path.

Builds a tiny-but-not-trivial Qwen2 model (default hidden 512, 8 layers) with a random LoRA
adapter, exports it in every format (timing each export, verification included), then decodes the
same greedy continuation with llama-cpp-python (Q4_K_M, F16 GGUF) and with mlx-lm (base +
adapter, and the fused model), and prints file sizes, tokens/s and the Q4_K_M / MLX ratio.

Run from the repository root:
    HF_HUB_OFFLINE=1 LD_PRELOAD=<libopenblas.so.0> .venv/bin/python bench/export.py
(options: --hidden 512 --layers 8 --tokens 128 --repeats 10 --threads <cores> --workdir DIR)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROMPT = [{"role": "user", "content": "Write a Python function that returns the sum of a list."}]


def make_version(root: Path, hidden: int, layers: int) -> tuple[Path, Path]:
    """A base model and a version folder holding a random (non-zero) mlx-lm LoRA adapter."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from sam_brain.dev.tinymodel import build_tiny_model

    base = build_tiny_model(root / "base", hidden_size=hidden, num_layers=layers, num_heads=8)
    model = load(str(base))[0]
    model.freeze()
    lora = {
        "rank": 8,
        "scale": 2.0,
        "dropout": 0.0,
        "keys": ["self_attn.q_proj", "self_attn.v_proj"],
    }
    linear_to_lora_layers(model, layers, lora)
    mx.random.seed(0)
    params = dict(tree_flatten(model.trainable_parameters()))
    b = {k: mx.random.normal(v.shape) * 0.02 for k, v in params.items() if k.endswith("lora_b")}
    model.load_weights(list(b.items()), strict=False)
    version = root / "versions" / "v1.0.0"
    version.mkdir(parents=True)
    mx.save_safetensors(
        str(version / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    config = {"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": lora}
    (version / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return base, version


Decoder = Callable[[], float]
"""One greedy decode of the benchmark prompt; returns tokens/s (prompt processing excluded)."""


def mlx_decoder(base: Path, adapter: Path | None, prompt: list[int], n: int) -> Decoder:
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.utils import load

    model = load(str(base), adapter_path=str(adapter) if adapter else None)[0]
    return lambda: _rate(tok for tok, _ in generate_step(mx.array(prompt), model, max_tokens=n))


def llama_decoder(gguf: Path, prompt: list[int], n: int, threads: int) -> Decoder:
    import llama_cpp

    llm: Any = llama_cpp.Llama(
        model_path=str(gguf), n_ctx=len(prompt) + n + 8, n_threads=threads, verbose=False
    )

    def decode() -> float:
        llm.reset()
        stream = llm.generate(prompt, temp=0.0, top_k=1)
        return _rate(tok for _, tok in zip(range(n), stream, strict=False))

    return decode


def _rate(tokens: Iterator[Any]) -> float:
    first = last = 0.0
    count = 0
    for _ in tokens:
        last = time.perf_counter()
        if count == 0:
            first = last
        count += 1
    return (count - 1) / (last - first) if count > 1 else 0.0


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and f.name != "export.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="tokens decoded per run")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--repeats", type=int, default=10, help="decode runs per runtime")
    parser.add_argument("--workdir", type=Path, help="keep the models here (default: a temp dir)")
    args = parser.parse_args()

    from mlx_lm.utils import load

    from deployment.export import export_version

    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        base, version = make_version(root, args.hidden, args.layers)
        tokenizer: Any = load(str(base))[1]
        prompt = list(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True))

        rows: list[tuple[str, int, float]] = []
        exports = [("mlx", None), ("peft", None), ("fused", None), ("gguf", "f16")]
        exports += [("gguf", "q8_0"), ("gguf", "q4_k_m")]
        for fmt, quant in exports:
            out = root / "exports" / f"{fmt}-{quant or 'none'}"
            t0 = time.perf_counter()
            res = export_version(version, base, fmt, out, quant)
            took = time.perf_counter() - t0
            for name, nbytes in sorted(res.files.items()):
                if fmt == "fused" and name != "model.safetensors":
                    continue
                if name == "adapter-f16.gguf" and quant != "f16":
                    continue
                rows.append((f"{fmt} {quant or ''} {name}".replace("  ", " "), nbytes, took))
        base_bytes = (base / "model.safetensors").stat().st_size

        q4 = root / "exports" / "gguf-q4_k_m" / "model-q4_k_m.gguf"
        f16 = root / "exports" / "gguf-f16" / "model-f16.gguf"
        fused = root / "exports" / "fused-none"
        n, threads = args.tokens, args.threads
        decoders = {
            "llama.cpp Q4_K_M GGUF": llama_decoder(q4, prompt, n, threads),
            "llama.cpp F16 GGUF": llama_decoder(f16, prompt, n, threads),
            "mlx-lm base + adapter": mlx_decoder(base, version, prompt, n),
            "mlx-lm fused": mlx_decoder(fused, None, prompt, n),
        }
        # Round-robin, so every runtime sees the same mix of quiet and busy moments.
        runs: dict[str, list[float]] = {label: [] for label in decoders}
        for _ in range(args.repeats):
            for label, decode in decoders.items():
                runs[label].append(decode())
        speeds = list(runs.items())

    print(
        f"model: Qwen2 hidden {args.hidden}, {args.layers} layers, base model.safetensors"
        f" {base_bytes / 1e6:.1f} MB (f32); {args.tokens} tokens decoded, {args.threads} threads;"
        f" load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    print("\n| export | file | size (MB) | export time (s) |\n|---|---|---:|---:|")
    for label, nbytes, took in rows:
        fmt, _, name = label.rpartition(" ")
        print(f"| {fmt} | {name} | {nbytes / 1e6:.2f} | {took:.1f} |")
    # Best of the repeats: on a shared machine the fastest run is the least disturbed one.
    print(f"\n| runtime | decode tokens/s, best of {args.repeats} | median |\n|---|---:|---:|")
    for label, rates in speeds:
        print(f"| {label} | {max(rates):.1f} | {statistics.median(rates):.1f} |")
    ratio = max(speeds[0][1]) / max(speeds[2][1])
    print(f"\nQ4_K_M GGUF (llama.cpp) / MLX adapter path, best runs: {ratio:.2f}x")


if __name__ == "__main__":
    main()
