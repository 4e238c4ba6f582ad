"""A real daemon subprocess for the tests that start one (`sam_brain.control.daemon serve`).

Ports come from `sam_brain.dev.demo.free_port`, which the demo uses for the same purpose.
`TINY_TRAINING` is the config of a daemon that trains the tiny model within seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.api_auth import auth_headers

# A tiny model with random weights rambles: its candidates are judged on test loss alone, and
# 6 short sessions leave only one or two rows held out (the default asks for 8).
TINY_TRAINING = """
[api]
port = {port}
[sources]
sessions_dirs = ["{sessions}"]
quiet_minutes = 0.0
[training]
backend = "mlx"
mlx_base_model = "{model}"
min_for_training = 10
profile = "t"
check_interval_seconds = 1.0
max_retries = 0
[deployment]
gate_max_repetition = 1.0
gate_min_terminated = 0.0
gate_min_rows = 1
[profiles.t]
lora_rank = 4
lora_alpha = 8.0
batch_size = 2
grad_accum = 1
max_seq_length = 256
num_layers = -1
learning_rate = 1e-3
max_steps = 12
eval_every = {eval_every}
save_every = {save_every}
"""


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def post(url: str, body: dict[str, Any], home: Path) -> tuple[int, Any]:
    """POST with the home's API token; returns (status, JSON body) for errors too."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **auth_headers(home)},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    """Start `sam-brain serve` with its output appended to `log`."""
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "sam_brain.control.daemon", "serve", *args],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def wait(
    check: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path, poll: float = 0.3
) -> Any:
    """The first truthy `check()` within `timeout` s; fails with the daemon's log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            out = check()
            if out:
                return out
        except OSError:
            pass
        time.sleep(poll)
    raise AssertionError(f"timed out; daemon log:\n{log.read_text()[-3000:]}")
