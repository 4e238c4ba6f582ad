from __future__ import annotations

from pathlib import Path

import pytest

from sam_brain.errors import ModelUnavailable
from sam_brain.hub import resolve_model


def test_local_model_directory_is_used_as_is(tiny_model: Path) -> None:
    assert resolve_model(str(tiny_model)) == tiny_model


def test_offline_unknown_model_names_it_and_says_how(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable) as info:
        resolve_model("mlx-community/definitely-not-cached-4bit", cache_dir=tmp_path)
    msg = str(info.value)
    assert "mlx-community/definitely-not-cached-4bit" in msg
    assert "huggingface-cli download" in msg and "local model directory" in msg


def test_cached_hub_model_resolves_offline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path
) -> None:
    """A model already in the hub cache layout resolves without any network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "models--acme--tiny"
    snap = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snap.mkdir(parents=True)
    for f in tiny_model.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef0123456789abcdef01234567")
    assert resolve_model("acme/tiny", cache_dir=tmp_path) == snap


def test_missing_path_and_non_model_dir(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelUnavailable, match=r"config\.json"):
        resolve_model(str(tmp_path))
