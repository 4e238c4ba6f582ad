"""Named trainings' lineages in the store: an old home migrates, versions and rollbacks never cross."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from sam_brain.config import Config, NamedTraining
from sam_brain.errors import Conflict, NotFound
from sam_brain.home import Home
from sam_brain.store import VersionStatus

OLD_HOME = Path(__file__).parent / "fixtures" / "home_v0"


def make_adapter(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapters.safetensors").write_bytes(payload)
    (path / "adapter_config.json").write_text('{"rank": 4}')
    return path


def config(data: Path) -> Config:
    return Config(data_dir=str(data), trainings={"gh": NamedTraining(sources=["teacher"])})


def test_a_home_made_by_the_previous_release_migrates(tmp_path: Path) -> None:
    data = tmp_path / "home"
    shutil.copytree(OLD_HOME, data)
    before = sqlite3.connect(data / "state.db")
    assert "training" not in {r[1] for r in before.execute("PRAGMA table_info(versions)")}
    before.close()

    home = Home.open(config(data))
    try:
        # The default training is the old lineage, unchanged: statuses, canary, runs.
        statuses = {v.version: v.status for v in home.store.versions()}
        assert statuses == {
            "v1.0.0": VersionStatus.INACTIVE,
            "v1.0.1": VersionStatus.ACTIVE,
            "v1.0.2": VersionStatus.CANARY,
        }
        weight = home.store.canary()
        assert weight is not None and (weight.version, weight.percent) == ("v1.0.2", 10)
        assert len(home.store.runs()) == 3
        assert all(v.training == "sam" for v in home.store.versions())
        home.versions.verify("v1.0.1")  # the folders were not moved
        # The named training starts empty, and its first version is numbered from 0.
        gh = home.for_training("gh")
        assert gh.store.versions() == [] and gh.store.runs() == [] and gh.store.canary() is None
        v = gh.versions.register(make_adapter(tmp_path / "a", b"gh0"))
        assert v.version == "gh-v1.0.0" and v.seq == 0
        # The default's numbering goes on where it was.
        d = home.versions.register(make_adapter(tmp_path / "b", b"sam3"))
        assert d.version == "v1.0.3"
    finally:
        home.close()
    # Reopening runs every migration again without change (idempotent).
    again = Home.open(config(data))
    assert [v.version for v in again.store.versions()] == ["v1.0.0", "v1.0.1", "v1.0.2", "v1.0.3"]
    assert [v.version for v in again.for_training("gh").store.versions()] == ["gh-v1.0.0"]
    again.close()


def test_versions_and_rollbacks_do_not_cross(tmp_path: Path) -> None:
    home = Home.open(config(tmp_path / "home"))
    gh = home.for_training("gh")
    for i in range(2):
        home.versions.register(make_adapter(tmp_path / f"s{i}", f"s{i}".encode()))
        gh.versions.register(make_adapter(tmp_path / f"g{i}", f"g{i}".encode()))
    home.versions.activate("v1.0.0")
    home.versions.activate("v1.0.1")
    gh.versions.activate("gh-v1.0.0")
    # Activating in one lineage leaves the other's active version alone.
    assert home.versions.current().version == "v1.0.1"  # type: ignore[union-attr]
    assert gh.versions.current().version == "gh-v1.0.0"  # type: ignore[union-attr]
    assert (tmp_path / "home" / "trainings" / "gh" / "versions" / "gh-v1.0.0").is_dir()
    assert (tmp_path / "home" / "trainings" / "gh" / "versions" / "current.txt").read_text() == (
        "gh-v1.0.0\n"
    )
    assert (tmp_path / "home" / "versions" / "current.txt").read_text() == "v1.0.1\n"
    # A version of one training cannot be activated or rolled back to from another.
    with pytest.raises(NotFound, match="belongs to training 'gh'"):
        home.versions.rollback("gh-v1.0.0")
    with pytest.raises(NotFound, match="belongs to training 'sam'"):
        gh.versions.activate("v1.0.0")
    # gh has nothing earlier to go back to; the default does, and only its own.
    with pytest.raises(Conflict, match="nothing to roll back to"):
        gh.versions.rollback()
    back = home.versions.rollback()
    assert back.version == "v1.0.0"
    assert gh.versions.current().version == "gh-v1.0.0"  # type: ignore[union-attr]
    assert gh.store.get_version("gh-v1.0.0").status is VersionStatus.ACTIVE
    # Runs are per lineage too.
    run = gh.store.create_run("forced", "cuda", "tiny", 1, 0)
    assert [r.run_id for r in gh.store.runs()] == [run.run_id] and home.store.runs() == []
    assert gh.runs_dir == tmp_path / "home" / "trainings" / "gh" / "runs"
    home.close()


def test_an_unknown_training_is_named(tmp_path: Path) -> None:
    home = Home.open(config(tmp_path / "home"))
    with pytest.raises(NotFound, match="no training 'nope' \\(configured: sam, gh\\)"):
        home.for_training("nope")
    assert home.for_training("sam") is home
    home.close()


def test_a_named_training_s_lost_rows_are_rebuilt_from_its_folders(tmp_path: Path) -> None:
    home = Home.open(config(tmp_path / "home"))
    gh = home.for_training("gh")
    for i in range(2):
        gh.versions.activate(
            gh.versions.register(make_adapter(tmp_path / f"g{i}", b"%d" % i)).version
        )
    home.versions.register(make_adapter(tmp_path / "s", b"s"))
    with home.store.tx() as db:
        db.execute("DELETE FROM versions WHERE training='gh'")
    home.close()
    again = Home.open(config(tmp_path / "home"))
    gh = again.for_training("gh")
    assert [(v.version, v.status, v.training) for v in gh.store.versions()] == [
        ("gh-v1.0.0", VersionStatus.INACTIVE, "gh"),
        ("gh-v1.0.1", VersionStatus.ACTIVE, "gh"),
    ]
    assert [v.version for v in again.store.versions()] == ["v1.0.0"]  # untouched
    assert any("gh-v1.0.0, gh-v1.0.1 rebuilt" in n for n in again.notices)
    again.close()
