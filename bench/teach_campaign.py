"""Teach campaign benchmark: `generate` of 200 examples with teacher concurrency 1 vs 8.

The teacher is the real `anthropic` SDK (streamed Messages API, cached system prompt) against a
local server speaking the Anthropic wire format (`sam_brain.dev.teacher_wire`) that takes
`--latency` seconds per answer, a stand-in for a remote model's time to answer. Each run uses
a fresh home and goes through the whole job: runner, budget, ledger, progress file, validation,
dedup and the pool. Printed: wall time per concurrency, the ratio, and the cost check: the
ledger's tokens must equal the tokens the server billed, and its USD the priced sum, exactly.

With `--real`, the teacher is instead the `openai` SDK against SAM Brain's own
`/v1/chat/completions` serving the real model (SmolLM2-135M-Instruct, `samctl dev real-model`),
answers capped at `--max-tokens`; its answers do not validate (a 135M model), so this measures
the wire, the concurrency and the accounting (the ledger against the usage the server sent,
prompt-cache tokens included), not the samples.

Run from the repository root (about 15 s; `--quick` takes a few; `--real`, which defaults to
40 examples, several minutes):
    .venv/bin/python bench/teach_campaign.py [--examples 200] [--batch-size 5] [--latency 0.25]
    .venv/bin/python bench/teach_campaign.py --real [--max-tokens 48]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/teach_campaign.py` works
from sam_brain.config_load import parse_config
from sam_brain.dev.teacher_wire import Wire, samctl_examples, serve, serve_app
from sam_brain.home import Home
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.runner import run_job
from sam_brain.teacher_ledger import Ledger

KEY = "sk-ant-bench-not-a-real-key"
TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")
BILLED = {
    "input_tokens": "input_tokens",
    "output_tokens": "output_tokens",
    "cache_read_tokens": "cache_read_input_tokens",
    "cache_write_tokens": "cache_creation_input_tokens",
}


Server = tuple[dict[str, Any], Counter[str], Callable[[], int]]


@contextmanager
def teacher_server(args: argparse.Namespace) -> Iterator[Server]:
    """The teacher config, the server's own usage tally and its count of answers delivered."""
    if not args.real:
        with serve(Wire(samctl_examples, key=KEY, delay=args.latency)) as wire:
            teacher = {"provider": "anthropic", "model": "claude-bench", "base_url": wire.url}
            yield teacher, wire.billed, lambda: wire.answered
        return
    from aiohttp import web

    from deployment.serving import ChatServer, add_routes
    from sam_brain.dev.realmodel import build_real_model, real_model_dir
    from sam_brain.store import Store
    from sam_brain.versions import Versions

    billed: Counter[str] = Counter()

    @web.middleware
    async def tally(request: web.Request, handler: Any) -> Any:
        response = await handler(request)
        if request.path.endswith("/chat/completions") and response.status == 200:
            usage = json.loads(response.body)["usage"]
            cached = usage["prompt_tokens_details"]["cached_tokens"]
            billed.update(input_tokens=usage["prompt_tokens"] - cached,
                          output_tokens=usage["completion_tokens"],
                          cache_read_input_tokens=cached, answers=1)  # fmt: skip
        return response

    model = real_model_dir() or build_real_model()
    with tempfile.TemporaryDirectory() as tmp:
        versions = Versions(Store(Path(tmp) / "state.db"), Path(tmp) / "versions")
        server = ChatServer(versions, model, default_max_tokens=args.max_tokens)
        app = web.Application(middlewares=[tally])
        add_routes(app, server)
        with serve_app(app) as url:
            teacher = {"provider": "openai", "model": "base", "base_url": url + "/v1",
                       "max_output_tokens": args.max_tokens}  # fmt: skip
            yield teacher, billed, lambda: billed["answers"]
        server.close()


def campaign(
    root: Path, concurrency: int, args: argparse.Namespace, server: Server | None = None
) -> dict[str, object]:
    """One campaign on a fresh home; `server` is shared across campaigns (--real: the model
    stays loaded), else each campaign gets its own wire server."""
    with contextlib.ExitStack() as stack:
        if server is None:
            server = stack.enter_context(teacher_server(args))
        teacher, billed_usage, answered = server
        before, answered_before = Counter(billed_usage), answered()
        # One call per request (no Message Batches): the concurrency is what is measured.
        teacher = {**teacher, "concurrency": concurrency, "batch_min_requests": 100_000}
        home = Home.open(parse_config({"data_dir": str(root), "teacher": teacher}))
        spec = JobSpec(kind="generate", source="samctl", count=args.examples,
                       options={"batch_size": args.batch_size})  # fmt: skip
        started = time.perf_counter()
        status = run_job(home, spec)
        wall = time.perf_counter() - started
        delivered = answered() - answered_before
        billed_usage = Counter(billed_usage)
        billed_usage.subtract(before)
    if status.state != "done":
        raise SystemExit(f"campaign failed: {status.state} {status.error}")
    ledger = Ledger(root / "state.db")
    calls = ledger.calls(spec.job_id)
    cfg = home.config.teacher
    tokens = {k: sum(int(c[k]) for c in calls) for k in TOKENS}
    billed = {k: int(billed_usage[BILLED[k]]) for k in TOKENS}
    priced = (
        billed["input_tokens"] * cfg.usd_per_mtok_input
        + billed["output_tokens"] * cfg.usd_per_mtok_output
        + billed["cache_read_tokens"] * cfg.usd_per_mtok_cache_read
        + billed["cache_write_tokens"] * cfg.usd_per_mtok_cache_write
    ) / 1_000_000
    usd = sum(float(c["usd"]) for c in calls)
    exact = tokens == billed and len(calls) == delivered and abs(usd - priced) < 1e-12
    home.close()
    return {
        "wall": wall,
        "requests": len(calls),
        "answered": delivered,
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
    p.add_argument("--real", action="store_true", help="SAM Brain's /v1 on the real model")
    p.add_argument("--max-tokens", type=int, default=48, help="answer cap with --real")
    args = p.parse_args()
    if args.quick:
        args.examples, args.latency = 40, 0.1
    if args.real and args.examples == 200:
        args.examples = 40  # a loaded 2-core CPU prefills the schema prompt in seconds per request
    os.environ["ANTHROPIC_API_KEY"] = KEY
    where = (
        f"SAM Brain's /v1 on the real model, answers <= {args.max_tokens} tokens"
        if args.real
        else f"Anthropic-wire server, {args.latency:.2f} s per answer"
    )
    print(f"# teach campaign: {args.examples} examples, {args.batch_size} per request,"
          f" {where}; {common.machine_load()}")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        shared = stack.enter_context(teacher_server(args)) if args.real else None
        # Imports, the SDK client, the pool's first creation (and with --real the model load)
        # are paid once here, untimed.
        warm = argparse.Namespace(**{**vars(args), "examples": args.batch_size, "latency": 0})
        campaign(Path(tmp) / "warm-up", 1, warm, shared)
        for c in (1, args.concurrency):
            results[c] = campaign(Path(tmp) / f"c{c}", c, args, shared)
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
    print(f"same samples and tokens at both concurrencies: {'yes' if same else 'no'}"
          + (" (the real model samples at temperature 1)" if args.real else ""))  # fmt: skip
    return 0 if one["exact"] and many["exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
