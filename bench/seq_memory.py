"""Peak memory of LoRA training at a sequence length: what the `8gb` profile's length costs.

Agentic windows are long (docs/benchmarks.md: their length distribution), so the `8gb` profile's
`max_seq_length` is set by what one training step at that length needs. For each model and
length, the daemon's own training worker (`python -m sam_brain.train.worker`) runs a few steps of
the `8gb` profile (batch 1, rank 4, 8 layers) on rows of real fixture text that each fill the
length, with gradient checkpointing on and off; the peak RSS of the process (`wait4`) and the
backend's reported peak are printed. Models: the 33.6M tiny Qwen2-style model built offline, and
a real 135M model when one is on disk (`--real`, default ~/.cache/sam-brain/models/...).

Run from the repository root (a few minutes on a CPU):
    HF_HUB_OFFLINE=1 .venv/bin/python bench/seq_memory.py [--lengths 512 2048] [--backend mlx]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train import openblas_env, run_process, torch_env  # noqa: E402

FIXTURES = REPO.parent / "shared" / "fixtures" / "claude-sessions"
REAL = Path.home() / ".cache" / "sam-brain" / "models" / "smollm2-135m-instruct"


def write_rows(data: Path, model: Path, length: int, rows: int = 6) -> None:
    """`rows` chat rows of real transcript text, each at least `length` tokens long."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    text = " ".join(p.read_text(errors="replace") for p in sorted(FIXTURES.rglob("*.jsonl")))
    ids = tok.encode(text[: 40 * length * rows]).ids
    data.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.jsonl", rows), ("valid.jsonl", 2)):
        lines = []
        for i in range(n):
            chunk = tok.decode(ids[i * length : (i + 1) * length])
            messages = [
                {"role": "user", "content": chunk[: len(chunk) // 4]},
                {"role": "assistant", "content": chunk[len(chunk) // 4 :]},
            ]
            lines.append(json.dumps({"messages": messages}))
        (data / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def measure(
    backend: str, model: Path, length: int, ckpt: bool, work: Path, steps: int = 3
) -> dict[str, float]:
    from sam_brain.config import Config
    from sam_brain.protocols import TrainSpec

    profile = replace(
        Config().profiles["8gb"],
        max_seq_length=length,
        grad_checkpoint=ckpt,
        grad_accum=1,
        max_steps=steps,
        eval_every=100,
        save_every=100,
    )
    name = f"{model.name}-{length}-{'ckpt' if ckpt else 'full'}"
    out = work / name
    data = work / f"data-{model.name}-{length}"
    if not data.exists():
        write_rows(data, model, length + 64)  # longer than the length: every row is cut to it
    spec = TrainSpec(name, str(model), str(data), str(out), asdict(profile), resume=False)
    spec_path = out.with_suffix(".json")
    spec_path.write_text(spec.to_json(), encoding="utf-8")
    env = openblas_env() if backend == "mlx" else torch_env()
    env["SAM_BRAIN_CUDA_QUANTIZE"] = "0"
    cmd = [sys.executable, "-m", "sam_brain.train.worker", backend, str(spec_path)]
    code, lines, wall, rss = run_process(cmd, env, out.with_suffix(".log"), 3600)
    reported = [
        json.loads(t[2:]).get("peak_memory_mb")
        for _, t in lines
        if t.startswith("@@") and '"progress"' in t
    ]
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}); see {out.with_suffix('.log')}")
    peak = max((r for r in reported if r), default=0.0)
    return {"rss_mb": round(rss), "backend_peak_mb": round(peak), "seconds": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--backend", default="mlx", choices=["mlx", "cuda"])
    p.add_argument("--real", type=Path, default=REAL, help="a real small model directory")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run")
    p.add_argument("--no-tiny", action="store_true", help="measure the real model only")
    p.add_argument("--ckpt", choices=["both", "on", "off"], default="both")
    args = p.parse_args(argv)
    from sam_brain.dev.tinymodel import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = [args.real] if (args.real / "config.json").is_file() else []
        if not args.no_tiny:
            models.insert(0, build_tiny_model(
                work / "tiny-33m", hidden_size=512, num_layers=8, vocab_size=16384,
                num_heads=8, num_kv_heads=4,
            ))  # fmt: skip
        modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.ckpt]
        print(f"| model | length | grad ckpt | peak RSS MB | {args.backend} peak MB | wall s |")
        print("|---|---|---|---|---|---|")
        for model in models:
            for length in args.lengths:
                for ckpt in modes:
                    r = measure(args.backend, model, length, ckpt, work, args.steps)
                    print(f"| {model.name} | {length} | {'on' if ckpt else 'off'} | "
                          f"{r['rss_mb']} | {r['backend_peak_mb']} | {r['seconds']} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
