"""The daemon serves a named training beside the default by model id (a real daemon process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import load_config
from sam_brain.dev.demo import free_port
from sam_brain.home import Home
from tests.api_auth import auth_headers
from tests.daemon_proc import wait


def call(url: str, data: Path | None, body: dict[str, Any] | None = None) -> tuple[Any, str]:
    headers = {"Content-Type": "application/json", **(auth_headers(data) if data else {})}
    req = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        method="GET" if body is None else "POST",
        headers=headers,
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read()), resp.headers.get("x-sam-version", "")


@pytest.mark.slow
def test_the_daemon_serves_each_training_by_model_id(
    tmp_path: Path, tiny_model: Path, lora_adapters: list[Path]
) -> None:
    home_dir = tmp_path / "home"
    home_dir.mkdir()
    port = free_port()
    (home_dir / "config.toml").write_text(f"""
data_dir = "{home_dir}"
[api]
port = {port}
[sources]
sessions_dirs = ["{home_dir / "no-sessions"}"]
[training]
backend = "mlx"
mlx_base_model = "{tiny_model}"
min_for_training = 1000
[trainings.gh]
schemas = ["gh"]
""")
    home = Home.open(load_config(home_dir / "config.toml"))
    home.versions.activate(home.versions.register(lora_adapters[0]).version)
    gh = home.for_training("gh")
    gh.versions.activate(gh.versions.register(lora_adapters[1]).version)
    data = home.data
    home.close()
    log = tmp_path / "daemon.log"
    env = dict(os.environ, SAM_BRAIN_HOME=str(home_dir), HF_HUB_OFFLINE="1")
    with open(log, "ab") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sam_brain.control.daemon", "serve"],
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: call(url + "/api/health", None)[0]["ok"], 120, proc, log)
        models, _ = call(url + "/v1/models", data)
        served = {m["id"]: m["version"] for m in models["data"]}
        assert served["sam"] == "v1.0.0" and served["sam-gh"] == "gh-v1.0.0"
        hello = [{"role": "user", "content": "hi"}]
        for model, version in (("sam-gh", "gh-v1.0.0"), ("sam", "v1.0.0"), ("sam-gh", None)):
            body, header = call(
                url + "/v1/chat/completions",
                data,
                {"model": model, "messages": hello, "max_tokens": 4},
            )
            assert header == body["sam_version"] == (version or "gh-v1.0.0")
        status, _ = call(url + "/api/self", data)
        assert [t["model"] for t in status["trainings"]] == ["sam", "sam-gh"]
        assert status["training_stats"]["model_version"] == "v1.0.0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
