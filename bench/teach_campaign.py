"""Teach campaign benchmark: `generate` of 200 examples with teacher concurrency 1 vs 8.

The teacher is the real `anthropic` SDK (streamed Messages API, cached system prompt) against a
local server speaking the Anthropic wire format (`sam_brain.dev.teacher_wire`) that takes
`--latency` seconds per answer, a stand-in for a remote model's time to answer. Each run uses
a fresh home and goes through the whole job: runner, budget, ledger, progress file, validation,
dedup and the pool. Printed: wall time per concurrency, the ratio, and the cost check: the
ledger's tokens must equal the tokens the server billed, and its USD the priced sum, exactly.

Run from the repository root (about 15 s; `--quick` takes a few):
    .venv/bin/python bench/teach_campaign.py [--examples 200] [--batch-size 5] [--latency 0.25]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/teach_campaign.py` works
from sam_brain.config_load import parse_config
from sam_brain.dev.teacher_wire import Wire, samctl_examples, serve
from sam_brain.home import Home
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.ledger import Ledger
from sam_brain.teach.runner import run_job

KEY = "sk-ant-bench-not-a-real-key"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
BILLED = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_input_tokens",
    "cache_write_tokens": "cache_creation_input_tokens",
}


def campaign(root: Path, concurrency: int, args: argparse.Namespace) -> dict[str, object]:
    with serve(Wire(samctl_examples, key=KEY, delay=args.latency)) as wire:
        teacher = {
            "provider": "anthropic",
            "model": "claude-bench",
            "base_url": wire.url,
            "concurrency": concurrency,
            "batch_min_requests": 100_000,  # one call per request: the concurrency is measured
        }
        home = Home.open(parse_config({"data_dir": str(root), "teacher": teacher}))
        spec = JobSpec(kind="generate", source="samctl", count=args.examples,
                       options={"batch_size": args.batch_size})  # fmt: skip
        started = time.perf_counter()
        status = run_job(home, spec)
        wall = time.perf_counter() - started
    if status.state != "done":
        raise SystemExit(f"campaign failed: {status.state} {status.error}")
    ledger = Ledger(root / "state.db")
    calls = ledger.calls(spec.job_id)
    cfg = home.config.teacher
    tokens = {k: sum(int(c[k]) for c in calls) for k in TOKENS}
    billed = {k: int(wire.billed[BILLED[k]]) for k in TOKENS}
    priced = (
        billed["input_tokens"] * cfg.usd_per_mtok_input
        + billed["output_tokens"] * cfg.usd_per_mtok_output
        + billed["cache_read_tokens"] * cfg.usd_per_mtok_cache_read
        + billed["cache_write_tokens"] * cfg.usd_per_mtok_cache_write
    ) / 1_000_000
    usd = sum(float(c["usd"]) for c in calls)
    exact = tokens == billed and len(calls) == wire.answered and abs(usd - priced) < 1e-12
    home.close()
    return {
        "wall": wall,
        "requests": len(calls),
        "answered": wire.answered,
        "stored": status.stored,
        "valid": status.counts.get("valid", 0),
        "usd": usd,
        "priced": priced,
        "tokens": tokens,
        "exact": exact,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=5, help="examples asked per request")
    p.add_argument("--latency", type=float, default=0.25, help="seconds per teacher answer")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--quick", action="store_true", help="40 examples, 0.1 s latency")
    args = p.parse_args()
    if args.quick:
        args.examples, args.latency = 40, 0.1
    os.environ["ANTHROPIC_API_KEY"] = KEY
    print(f"# teach campaign: {args.examples} examples, {args.batch_size} per request,"
          f" {args.latency:.2f} s per answer; {common.machine_load()}")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Imports, the SDK client and the pool's first creation are paid once here, untimed.
        warm = argparse.Namespace(**{**vars(args), "examples": args.batch_size, "latency": 0})
        campaign(Path(tmp) / "warm-up", 1, warm)
        for c in (1, args.concurrency):
            results[c] = campaign(Path(tmp) / f"c{c}", c, args)
    print("| concurrency | requests | wall (s) | req/s | valid | stored | USD | ledger = billed |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for c, r in results.items():
        wall = float(r["wall"])  # type: ignore[arg-type]
        print(f"| {c} | {r['requests']} | {wall:.2f} | {int(r['requests']) / wall:.1f} |"  # type: ignore[call-overload]
              f" {r['valid']} | {r['stored']} | {float(r['usd']):.6f} |"  # type: ignore[arg-type]
              f" {'exact' if r['exact'] else 'MISMATCH'} |")  # fmt: skip
    one, many = results[1], results[args.concurrency]
    ratio = float(one["wall"]) / float(many["wall"])  # type: ignore[arg-type]
    print(f"ratio wall c1/c{args.concurrency}: {ratio:.2f}")
    same = one["stored"] == many["stored"] and one["tokens"] == many["tokens"]
    print(f"same samples and tokens at both concurrencies: {'yes' if same else 'no'}")
    return 0 if one["exact"] and many["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
