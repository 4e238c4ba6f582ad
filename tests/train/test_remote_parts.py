"""Remote training without a cluster: the settings, no Ray import when local, the adapter transfer."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.errors import ConfigError, TrainingFailed
from sam_brain.train.remote_transfer import Incoming, land_adapter, send_files
from sam_brain.train.worker import emit


def test_remote_settings_parse_and_their_problems_are_collected() -> None:
    cfg = parse_config(
        {
            "training": {
                "backend": "cuda",
                "remote": "http://gpu-box:8265",
                "remote_fallback": "local",
                "remote_resources": {"workers": 4, "gpus_per_worker": 1, "cpus_per_worker": 8},
            }
        }
    )
    r = cfg.training.remote_resources
    assert (r.workers, r.gpus_per_worker, r.cpus_per_worker) == (4, 1.0, 8.0)
    assert cfg.training.remote_fallback == "local"

    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "training": {
                    "backend": "mlx",
                    "remote": "gpu-box:8265",
                    "remote_fallback": "cloud",
                    "remote_max_upload_mb": 0,
                    "remote_resources": {"workers": 2, "cpus_per_worker": 0},
                }
            }
        )
    text = str(err.value)
    for problem in (
        "training.remote: 'gpu-box:8265' is not a Ray address",
        "training.remote_fallback: 'cloud'",
        "training.remote_resources.workers: more than 1 needs backend cuda",
        "cpus_per_worker > 0",
        "training.remote_max_upload_mb/remote_timeout_minutes: must be positive",
    ):
        assert problem in text, text
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config({"training": {"remote_resources": {"gpus": 1}}})


def test_training_locally_never_imports_ray() -> None:
    code = (
        "import sys; import sam_brain.train.scheduler, sam_brain.train.worker,"
        " sam_brain.control.daemon; print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_adapter_arrives_checked_and_a_corrupted_byte_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapter"
    (out / "checkpoint" / "step-1").mkdir(parents=True)
    (out / "peft").mkdir()
    blobs = {"adapters.safetensors": os.urandom(40_000), "peft/adapter_config.json": b"{}"}
    for rel, blob in blobs.items():
        (out / rel).write_bytes(blob)
    (out / "checkpoint" / "step-1" / "optimizer.pt").write_bytes(b"stays on the cluster")
    assert send_files(out, emit) == 2
    lines = capsys.readouterr().out.splitlines()
    messages = [json.loads(line[2:]) for line in lines]
    assert sum(m["kind"] == "chunk" for m in messages) == 3 + 1  # 16 KB chunks

    def receive(msgs: list[dict[str, Any]]) -> Incoming:
        incoming = Incoming()
        for m in msgs:
            body = dict(m)
            assert incoming.take(body.pop("kind"), body)
        return incoming

    landed = tmp_path / "run" / "adapter"
    landed.parent.mkdir()
    land_adapter(receive(messages).files(), landed)
    assert {str(p.relative_to(landed)) for p in landed.rglob("*") if p.is_file()} == set(blobs)
    assert all((landed / rel).read_bytes() == blob for rel, blob in blobs.items())

    bad = [dict(m) for m in messages]
    chunk = next(m for m in bad if m["kind"] == "chunk")
    raw = bytearray(base64.b64decode(chunk["data"]))
    raw[100] ^= 0xFF
    chunk["data"] = base64.b64encode(bytes(raw)).decode()
    with pytest.raises(
        TrainingFailed, match=r"^adapter file adapters.safetensors arrived corrupted"
    ):
        receive(bad).files()
    with pytest.raises(TrainingFailed, match="did not arrive completely"):
        receive(messages[:-1]).files()  # the stream ended before the closing report
