"""A named training's export is named after its version: `NAME-vX.Y.Z-q4_k_m.gguf`."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployment.export import export_version
from deployment.export_build import gguf_name
from sam_brain.store import Store
from sam_brain.versions import Versions
from tests.deployment.test_export import make_adapter, needs_llama


def test_gguf_file_names() -> None:
    assert gguf_name("gh-v1.0.3", "q4_k_m") == "gh-v1.0.3-q4_k_m.gguf"
    assert gguf_name("v1.0.3", "q4_k_m") == "model-q4_k_m.gguf"  # the default's, as before


@needs_llama
@pytest.mark.slow
def test_a_named_training_exports_under_its_name(tiny_model: Path, tmp_path: Path) -> None:
    adapter = make_adapter(tiny_model, tmp_path / "run")
    gh = Versions(Store(tmp_path / "state.db").scoped("gh"), tmp_path / "trainings/gh/versions")
    v = gh.register(adapter, base_model=str(tiny_model))
    res = export_version(Path(v.adapter_path), tiny_model, "gguf", tmp_path / "out")
    assert set(res.files) == {"gh-v1.0.0-q4_k_m.gguf", "adapter-f16.gguf"}
    assert all(c["ok"] for c in res.checks)
