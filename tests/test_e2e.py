"""End to end: the real daemon in a subprocess, a real transcript, real MLX training, real HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.demo import free_port
from tests.daemon_proc import TINY_TRAINING, get, post, spawn, wait

pytestmark = pytest.mark.slow


def test_daemon_trains_and_activates_a_version(tmp_path: Path, tiny_model: Path) -> None:
    import numpy as np
    from safetensors.numpy import load_file

    from sam_brain.dev.examples import write_example_sessions

    home, sessions, port = tmp_path / "home", tmp_path / "projects", free_port()
    sessions.mkdir()
    home.mkdir()
    cfg = TINY_TRAINING.format(
        port=port, sessions=sessions, model=tiny_model, eval_every=6, save_every=6
    )
    (home / "config.toml").write_text(cfg)
    env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1")
    log = tmp_path / "daemon.log"
    url = f"http://127.0.0.1:{port}"
    proc = spawn(env, log)
    try:
        wait(lambda: get(url + "/api/health")["ok"], 60, proc, log)
        # A second daemon on the same home refuses to start.
        second = subprocess.run(
            [sys.executable, "-m", "sam_brain.control.daemon", "serve", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 10 and "another daemon" in second.stderr
        write_example_sessions(sessions, n_sessions=6, seed=3)

        def active() -> Any:
            # The version goes active inside the run's release step; the run completes just after.
            doc = get(url + "/api/self")
            ts = doc["training_stats"]
            done = ts["model_version"] != "base" and ts["last_training"]["status"] != "training"
            return doc if done else None

        doc = wait(active, 240, proc, log)
        ts = doc["training_stats"]
        assert ts["model_version"] == "v1.0.0"
        # Samples that arrive while the first run trains may start a second automatic run (and
        # version) before this check: judge the run that made v1.0.0.
        first = next(v for v in get(url + "/api/versions")["versions"] if v["version"] == "v1.0.0")
        run = next(r for r in get(url + "/api/training")["runs"] if r["run_id"] == first["run_id"])
        assert run["status"] == "completed" and first["training_samples"] > 0
        assert run["pool_version"] > 0
        assert run["metrics"]["best_val_loss"] < run["metrics"]["initial_val_loss"]

        # The stored adapter's LoRA B weights moved away from their zero init, and it reloads.
        adapter = home / "versions" / "v1.0.0"
        weights = load_file(str(adapter / "adapters.safetensors"))
        b_keys = [k for k in weights if k.endswith("lora_b")]
        assert b_keys and any(np.abs(weights[k]).max() > 0 for k in b_keys)
        from backends.mlx import MLXBackend

        reply = MLXBackend().generate(
            str(tiny_model), str(adapter), [{"role": "user", "content": "hello"}], max_tokens=8
        )
        assert isinstance(reply, str)

        # The chat endpoint serves the active version and names it.
        req = urllib.request.Request(
            url + "/v1/chat/completions",
            method="POST",
            data=json.dumps(
                {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert resp.headers["x-sam-version"] == "v1.0.0"
            assert json.loads(resp.read())["choices"][0]["message"]["role"] == "assistant"

        # A forced run trains again below the threshold, from v1.0.0's adapter; it passes the
        # gate and starts as a canary; promote makes it active; rollback goes back to v1.0.0.
        # More samples may have arrived after the first run started and started another
        # automatic run; a forced run waits for the slot.
        wait(lambda: not get(url + "/api/training")["training"], 240, proc, log)
        code, body = post(url + "/api/train", {"force": True}, home)
        assert code == 202 and body["run_id"]

        def canary_or_rejected() -> Any:
            versions = get(url + "/api/versions")["versions"]
            last = versions[-1]
            done = len(versions) >= 2 and last["status"] not in ("inactive", "active")
            return last if done else None

        second = wait(canary_or_rejected, 240, proc, log)
        assert second["status"] in ("canary", "rejected"), second
        if second["status"] == "rejected":
            # The gate found it no better (tiny random model, noisy test split): try the same
            # adapter by hand as a canary, which registers it as a new version.
            code, body = post(
                url + "/api/canary", {"path": second["adapter_path"], "traffic": 10}, home
            )
            assert code == 200, body
            second = body["canary"]
        assert get(url + "/api/canary")["version"] == second["version"]
        code, body = post(url + "/api/promote", {}, home)
        assert code == 200 and body["version"]["version"] == second["version"]
        code, body = post(url + "/api/rollback", {}, home)
        assert code == 200 and body["version"]["version"] == "v1.0.0"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    assert "stopped" in log.read_text()
