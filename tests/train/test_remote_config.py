"""`[training] remote*` settings: checked by the loader, and a local-only host never imports Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sam_brain.config_load import parse_config
from sam_brain.errors import ConfigError


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
