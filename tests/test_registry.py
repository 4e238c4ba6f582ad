from __future__ import annotations

import subprocess
import sys

import pytest

from sam_brain import registry
from sam_brain.errors import BackendUnavailable


def test_unknown_names_list_the_choices() -> None:
    with pytest.raises(BackendUnavailable, match="choose one of: cuda, mlx"):
        registry.backend("tpu")
    with pytest.raises(BackendUnavailable, match="distill, docs, git, sessions"):
        registry.load(registry.COLLECTORS, "email", "collector")


def test_explicit_setting_wins_and_auto_explains_itself() -> None:
    assert registry.choose_backend("mlx") == ("mlx", "set in config")
    name, why = registry.choose_backend("auto")
    assert name in registry.BACKENDS and why


def test_orchestration_imports_neither_mlx_nor_torch() -> None:
    """The daemon starts without paying for (or requiring) either ML stack."""
    code = (
        "import sys, sam_brain.control.daemon, sam_brain.control.cli, sam_brain.pipeline.ingest; "
        "bad = [m for m in ('mlx', 'mlx_lm', 'torch', 'transformers') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mlx_backend_module_never_imports_torch() -> None:
    code = "import sys, backends.mlx; sys.exit(1 if 'torch' in sys.modules else 0)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
