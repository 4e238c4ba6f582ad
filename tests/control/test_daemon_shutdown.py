"""The real daemon in a subprocess serving chat: an abandoned request frees the model, a full
queue answers 503, and SIGTERM under a full queue stops the daemon within 10 s."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.demo import free_port
from tests.daemon_proc import get, spawn, wait

pytestmark = pytest.mark.slow

LONG = {"messages": [{"role": "user", "content": "How do I list files?"}], "max_tokens": 4096}


def chat(port: int, body: dict[str, Any], timeout: float = 120) -> tuple[int, dict[str, str]]:
    """POST a chat body; the status and headers (-1 when the connection broke)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        resp.read()
        return resp.status, dict(resp.headers)
    except (OSError, http.client.HTTPException):
        return -1, {}
    finally:
        conn.close()


def abandon(port: int, body: dict[str, Any], after: float) -> None:
    """Send `body` and close the connection after `after` seconds without reading."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        data = json.dumps(body).encode()
        head = (
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        sock.sendall(head.encode() + data)
        time.sleep(after)


def test_sigterm_under_a_full_chat_queue_exits_within_10s(tmp_path: Path, tiny_model: Path) -> None:
    home, sessions, port = tmp_path / "home", tmp_path / "projects", free_port()
    sessions.mkdir()
    home.mkdir()
    (home / "config.toml").write_text(f"""
[api]
port = {port}
[sources]
sessions_dirs = ["{sessions}"]
[training]
backend = "mlx"
mlx_base_model = "{tiny_model}"
[deployment]
max_queued_requests = 2
""")
    env = dict(os.environ, SAM_BRAIN_HOME=str(home), HF_HUB_OFFLINE="1")
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    clients: list[threading.Thread] = []
    try:
        wait(lambda: get(f"http://127.0.0.1:{port}/api/health")["ok"], 90, proc, log)
        assert chat(port, {**LONG, "max_tokens": 2})[0] == 200  # the base model is loaded

        # An abandoned non-streamed request is cancelled: the next one does not wait for it.
        abandon(port, LONG, after=1.0)
        started = time.perf_counter()
        assert chat(port, {**LONG, "max_tokens": 2})[0] == 200
        assert time.perf_counter() - started < 10  # about a minute if it ran to its budget

        # One generating and two waiting fill the queue; the next is refused with Retry-After.
        results: list[int] = []
        for _ in range(3):
            t = threading.Thread(target=lambda: results.append(chat(port, LONG)[0]))
            t.start()
            clients.append(t)
            time.sleep(0.5)
        status, headers = chat(port, LONG)
        assert status == 503 and int(headers["Retry-After"]) >= 1

        started = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        took = time.perf_counter() - started
        print(f"SIGTERM under a full queue: exited in {took:.2f} s")
        assert code == 0, log.read_text()[-3000:]
        assert took < 10, took
        for t in clients:
            t.join(timeout=10)
        # The waiting and running requests were answered 503 (or their connection closed).
        assert len(results) == 3 and all(s in (503, -1) for s in results), results
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopped" in log.read_text()
