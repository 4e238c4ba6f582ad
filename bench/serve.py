"""Benchmark serving: adapter switches, routed chat overhead and `/api/self` latency under training.

Builds the benchmark model (`sam_brain.dev.tinymodel`, default hidden 512, 8 layers, vocab 16384),
two LoRA adapters of the same structure and a home in which they are versions v1.0.0 (active) and
v1.0.1 (canary), then starts on 127.0.0.1 the real daemon (`python -m sam_brain.control.daemon serve`)
and `python -m mlx_lm server --adapter-path A1`, and measures, in one run:

1. the first request after an adapter change: ours (`model: v1.0.x` pinned per request; the
   resident base swaps LoRA tensors in place) against mlx_lm.server (`"model": BASE,
   "adapters": A` per request, which reloads the model), with steady same-adapter requests too;
2. routed `/v1/chat/completions` (model `sam-brain`) against a direct in-process mlx-lm greedy
   generate of the same prompt and token count with the same adapter;
3. `/api/self` latency at a fixed request rate (open loop, fixed count) idle and while a forced
   training run of the default backend is going.

Only loopback addresses are used; every loop is bounded in count and time.

Run from the repository root:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/serve.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: import the checkout's packages

from bench.common import free_port  # noqa: E402
from bench.serve_report import report  # noqa: E402

PROMPT = [{"role": "user", "content": "How do I list the files in a folder with Python?"}]
KEYS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
CONFIG = """
[api]
port = {port}
[sources]
sessions_dirs = ["{sessions}"]
quiet_minutes = 0.0
[training]
mlx_base_model = "{model}"
cuda_base_model = "{model}"
min_for_training = 1000000
profile = "bench"
max_retries = 0
continue_from_active = false
[deployment]
canary_interval_seconds = 36000.0
[profiles.bench]
lora_rank = 8
lora_alpha = 16.0
batch_size = 4
grad_accum = 1
max_seq_length = 512
num_layers = -1
learning_rate = 1e-4
max_steps = 100000
eval_every = 100000
save_every = 100000
"""


def openblas_env() -> dict[str, str]:
    from sam_brain.train.supervisor import worker_env

    env = worker_env("mlx")
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


TOKEN: dict[str, str] = {}  # the daemon's control token, read from its home once it is up


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 120) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if body is not None and "token" in TOKEN:  # mutations need it, as for samctl
        headers["Authorization"] = f"Bearer {TOKEN['token']}"
    req = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


START = time.perf_counter()


def note(msg: str) -> None:
    """Progress on stderr (the report on stdout stays clean)."""
    print(f"[{time.perf_counter() - START:6.1f}s] {msg}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out = check()
            if out:
                return out
        except (OSError, ValueError, KeyError, TypeError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def write_adapter(base: Path, out: Path, seed: int, layers: int) -> Path:
    """An mlx-lm adapter with random non-zero LoRA weights (q/k/v/o of every layer, rank 8)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model: Any = load(str(base))[0]
    model.freeze()
    lora = {"rank": 8, "scale": 2.0, "dropout": 0.0, "keys": KEYS}
    linear_to_lora_layers(model, layers, lora)
    mx.random.seed(seed)
    params: Any = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05) for k, v in params]))
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": layers, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
    return out


def make_home(home: Path, base: Path, adapters: list[Path], port: int) -> None:
    """A daemon home whose versions are the adapters (v1.0.0 active, v1.0.1 a 10% canary)."""
    from deployment.canary import start_canary
    from sam_brain.config_load import load_config
    from sam_brain.dev.examples import write_example_sessions
    from sam_brain.home import Home

    sessions = home / "projects"
    sessions.mkdir(parents=True, exist_ok=True)
    write_example_sessions(sessions, n_sessions=6, seed=0)
    cfg = home / "config.toml"
    cfg.write_text(CONFIG.format(port=port, sessions=sessions, model=base), encoding="utf-8")
    os.environ["SAM_BRAIN_HOME"] = str(home)
    h = Home.open(load_config(cfg))
    try:
        names = [h.versions.register(a).version for a in adapters]
        h.versions.activate(names[0])
        start_canary(h.versions, names[1], 10)
    finally:
        h.close()


def daemon_token(home: Path) -> str:
    from sam_brain.config import data_dir
    from sam_brain.config_load import load_config
    from sam_brain.control.apitoken import read_token

    token = read_token(data_dir(load_config(home / "config.toml")))
    if not token:
        raise SystemExit(f"no control token under {home}")
    return token


def switch_latency(
    send: Callable[[str], Any], names: tuple[str, str], rounds: int
) -> tuple[list[float], list[float]]:
    """(first request after each change, steady repeats) in ms, alternating two adapters."""
    switched, steady = [], []
    send(names[1])  # warm: the base is loaded and the last adapter is names[1]
    for i in range(rounds * 2):
        name = names[i % 2]
        switched.append(timed(partial(send, name))[0])
        steady.append(timed(partial(send, name))[0])
    return switched, steady


async def rate_loop(url: str, count: int, rate: float) -> tuple[list[float], int, float]:
    """`count` GETs sent open-loop at `rate`/s; latency from each request's scheduled start."""
    import aiohttp

    latencies: list[float] = []
    errors = 0

    async def one(session: aiohttp.ClientSession, due: float) -> None:
        nonlocal errors
        try:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    errors += 1
        except aiohttp.ClientError:
            errors += 1
        latencies.append((time.perf_counter() - due) * 1000)

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        start = time.perf_counter()
        tasks = []
        for i in range(count):
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(one(session, due)))
        await asyncio.gather(*tasks)
        took = time.perf_counter() - start
    return latencies, errors, count / took


def main() -> None:
    env = openblas_env()
    if env.get("LD_PRELOAD") and "LD_PRELOAD" not in os.environ:
        # The direct mlx-lm baseline runs in this process: give it the daemon's fast BLAS too.
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    # SIGTERM unwinds through the `finally` below, which stops both servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--workdir", type=Path, help="keep the model, home and logs here")
    parser.add_argument("--rate", type=float, default=200.0, help="/api/self requests per second")
    args = parser.parse_args()
    quick = args.quick
    hidden, layers, vocab = (64, 2, 512) if quick else (512, 8, 16384)
    rounds, tokens, repeats = (2, 8, 3) if quick else (12, 64, 7)
    requests = 100 if quick else 1000

    with tempfile.TemporaryDirectory(prefix="sam-bench-serve-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        from sam_brain.dev.tinymodel import build_tiny_model

        base = build_tiny_model(
            work / "base", hidden_size=hidden, num_layers=layers, vocab_size=vocab
        )
        adapters = [write_adapter(base, work / f"a{i}", i, layers) for i in (1, 2)]
        note("model and adapters built")
        port, mlx_port = free_port(), free_port()
        make_home(work / "home", base, adapters, port)
        ours, theirs = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{mlx_port}"
        env = {**openblas_env(), "SAM_BRAIN_HOME": str(work / "home")}
        env["SAM_BRAIN_CUDA_QUANTIZE"] = "0"
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for cmd, log in (
                ([sys.executable, "-m", "sam_brain.control.daemon", "serve"], "daemon.log"),
                (
                    [
                        *(sys.executable, "-m", "mlx_lm", "server", "--model", str(base)),
                        *("--adapter-path", str(adapters[0]), "--host", "127.0.0.1"),
                        *("--port", str(mlx_port), "--max-tokens", str(tokens)),
                    ],
                    "mlx_lm_server.log",
                ),
            ):
                with (work / log).open("wb") as fh:
                    procs.append(
                        subprocess.Popen(
                            cmd, env=env, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT
                        )
                    )
            wait_for("the daemon", lambda: http(ours + "/api/health")["ok"], 120)
            TOKEN["token"] = daemon_token(work / "home")
            wait_for("mlx_lm.server", lambda: http(theirs + "/health")["status"] == "ok", 120)
            note("daemon and mlx_lm.server are up")
            results = measure(ours, theirs, base, adapters, rounds, tokens, repeats)
            results["self"] = measure_self(ours, requests, args.rate, quick)
        finally:
            note("stopping the servers")
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
        note("done")
        report(results, hidden, layers, vocab, tokens, args.rate)


def measure(
    ours: str, theirs: str, base: Path, adapters: list[Path], rounds: int, tokens: int, reps: int
) -> dict[str, Any]:
    """Adapter switches and routed-chat overhead; returns every latency list in ms."""
    import mlx.core as mx
    from mlx_lm import generate, load

    from deployment.canary import routes_to_canary
    from deployment.resident import ResidentModel

    def ours_send(
        version: str, max_tokens: int = 1, user: str = "bench", messages: Any = PROMPT
    ) -> Any:
        body: dict[str, Any] = {"model": version, "messages": messages, "user": user}
        body["max_tokens"] = max_tokens
        return http(ours + "/v1/chat/completions", body)

    def theirs_send(adapter: str, max_tokens: int = 1) -> Any:
        body: dict[str, Any] = {"model": str(base), "adapters": adapter, "messages": PROMPT}
        body |= {"max_tokens": max_tokens, "temperature": 0.0}
        return http(theirs + "/v1/chat/completions", body)

    out: dict[str, Any] = {}
    out["ours_switch"], out["ours_steady"] = switch_latency(ours_send, ("v1.0.0", "v1.0.1"), rounds)
    pair = (str(adapters[0]), str(adapters[1]))
    out["mlx_switch"], out["mlx_steady"] = switch_latency(theirs_send, pair, rounds)
    note("adapter switches measured")

    # In-process: the resident swap against mlx-lm's load of base + adapter.
    resident = ResidentModel(base)
    resident.use(pair[1])
    out["swap_ms"] = [resident.use(pair[i % 2]) for i in range(rounds * 4)]
    out["load_ms"] = [timed(lambda: load(str(base), adapter_path=pair[0]))[0] for _ in range(3)]
    del resident

    # Routed chat (model "sam-brain", a user the canary does not take) against direct generate.
    user = next(
        u for u in (f"user-{i}" for i in range(100)) if not routes_to_canary(u, "v1.0.1", 10)
    )
    loaded: Any = load(str(base), adapter_path=pair[0])
    model, tokenizer = loaded[0], loaded[1]

    # A new question each round: neither side may reuse a cached prompt (ours keeps a prompt
    # cache, mlx-lm's generate does not), so both read the whole prompt every time.
    def question(i: int) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{PROMPT[0]['content']} (case {i})"}]

    def prompt(i: int) -> Any:
        return tokenizer.apply_chat_template(question(i), add_generation_prompt=True)

    direct_text = generate(model, tokenizer, prompt(-1), max_tokens=tokens)  # warm-up
    ours_send("sam-brain", tokens, user, question(-2))
    routed, direct, counts, same = [], [], set(), True
    for i in range(reps):  # interleaved, so both see the same background load
        ms, body = timed(lambda i=i: ours_send("sam-brain", tokens, user, question(i)))
        routed.append(ms)
        counts.add(body["usage"]["completion_tokens"])
        ms, direct_text = timed(
            lambda i=i: generate(model, tokenizer, prompt(i), max_tokens=tokens)
        )
        direct.append(ms)
        same = same and body["choices"][0]["message"]["content"] == direct_text
    n_direct = len(tokenizer.encode(direct_text, add_special_tokens=False))
    out |= {"routed": routed, "direct": direct, "tokens": sorted(counts), "same_text": same}
    out["direct_tokens"] = n_direct
    note("routed chat overhead measured")
    mx.clear_cache()
    return out


def measure_self(url: str, count: int, rate: float, quick: bool) -> dict[str, Any]:
    """`/api/self` latencies at `rate`: idle, then during a forced training run (cancelled after)."""
    # One at a time first: the service time says how many requests per second it can take.
    service = [timed(lambda: http(url + "/api/self"))[0] for _ in range(max(10, count // 20))]
    idle = asyncio.run(rate_loop(url + "/api/self", count // 2, rate))
    note("/api/self idle measured; starting a training run")
    started = http(url + "/api/train", {"force": True})
    if not started.get("started"):
        raise SystemExit(f"the forced training run did not start: {started}")

    def stepping() -> bool:
        doc = http(url + "/api/training")
        current = doc.get("current") or {}
        return bool(doc["training"] and (quick or (current.get("progress") or {}).get("step")))

    wait_for("the training run's first step", stepping, 600)
    note("training is running")
    busy = asyncio.run(rate_loop(url + "/api/self", count, rate))
    doc = http(url + "/api/training")
    still = bool(doc["training"])
    step = ((doc.get("current") or {}).get("progress") or {}).get("step")
    http(url + "/api/train/cancel", {})
    return {
        "service": service,
        "idle": idle,
        "busy": busy,
        "training_throughout": still,
        "step": step,
    }


if __name__ == "__main__":
    main()
