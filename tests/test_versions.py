from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployment import canary
from sam_brain.errors import Conflict, NotFound, PromotionRejected
from sam_brain.store import Store
from sam_brain.versions import Versions, checksum_dir


def make_adapter(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapters.safetensors").write_bytes(payload)
    (path / "adapter_config.json").write_text('{"rank": 4}')
    (path / "0000010_adapters.safetensors").write_bytes(b"periodic checkpoint, not deployed")
    return path


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    return Versions(Store(tmp_path / "state.db"), tmp_path / "versions")


def test_register_names_checksums_and_copies_only_deployable_files(
    versions: Versions, tmp_path: Path
) -> None:
    v0 = versions.register(make_adapter(tmp_path / "a0", b"w0"), run_id="r0", training_samples=5)
    v1 = versions.register(make_adapter(tmp_path / "a1", b"w1"), run_id="r1")
    assert (v0.version, v1.version) == ("v1.0.0", "v1.0.1")
    stored = Path(v0.adapter_path)
    assert sorted(p.name for p in stored.iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
        "manifest.json",
    ]
    assert v0.checksum == checksum_dir(stored)
    assert v0.checksum != v1.checksum
    assert not list(versions.root.glob(".*.tmp"))


def test_activate_and_rollback_follow_deploy_history(versions: Versions, tmp_path: Path) -> None:
    for i in range(3):
        v = versions.register(make_adapter(tmp_path / f"a{i}", f"w{i}".encode()))
        versions.activate(v.version)
    assert versions.current().version == "v1.0.2"  # type: ignore[union-attr]
    assert (versions.root / "current.txt").read_text().strip() == "v1.0.2"
    back = versions.rollback()
    assert back.version == "v1.0.1"
    assert versions.store.get_version("v1.0.2").status == "rolled_back"
    assert versions.rollback().version == "v1.0.0"
    with pytest.raises(Conflict, match="nothing to roll back"):
        versions.rollback()
    assert versions.rollback("v1.0.2").version == "v1.0.2"  # explicit target is allowed
    with pytest.raises(NotFound, match=r"v9\.9\.9"):
        versions.rollback("v9.9.9")


def test_corrupt_version_is_refused(versions: Versions, tmp_path: Path) -> None:
    v = versions.register(make_adapter(tmp_path / "a", b"good"))
    (Path(v.adapter_path) / "adapters.safetensors").write_bytes(b"bitrot")
    with pytest.raises(PromotionRejected, match="checksum"):
        versions.activate(v.version)
    assert versions.current() is None


def test_missing_files_fail_the_sanity_check(versions: Versions, tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(PromotionRejected, match=r"adapters\.safetensors"):
        versions.register(d)
    assert versions.store.versions() == []


def test_versions_json_mirrors_the_index(versions: Versions, tmp_path: Path) -> None:
    import json

    v = versions.register(make_adapter(tmp_path / "a", b"w"))
    versions.activate(v.version)
    doc = json.loads((versions.root / "versions.json").read_text())
    assert [(d["version"], d["status"]) for d in doc["versions"]] == [("v1.0.0", "active")]


def test_unknown_adapter_format_is_refused(versions: Versions, tmp_path: Path) -> None:
    d = make_adapter(tmp_path / "a", b"w")
    (d / "adapter_config.json").write_text("not json")
    with pytest.raises(PromotionRejected, match="not JSON"):
        versions.register(d)


def test_prune_keeps_the_newest_and_never_the_active_canary_or_rollback_target(
    versions: Versions, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    for i in range(7):
        (runs / f"r{i}" / "adapter").mkdir(parents=True)
        versions.register(make_adapter(tmp_path / f"a{i}", f"w{i}".encode()), run_id=f"r{i}")
    versions.activate("v1.0.1")  # deployed once: the rollback target after the next activation
    versions.activate("v1.0.2")
    canary.start_canary(versions, "v1.0.3", 10)
    canary.reject(versions, "v1.0.0", "gate")
    assert versions.prune(0, runs) == []  # 0 keeps all
    pruned = versions.prune(4, runs)
    # 7 versions, keep 4: the three oldest unprotected go (v1.0.0, v1.0.4, v1.0.5);
    # v1.0.1 (rollback target), v1.0.2 (active) and v1.0.3 (canary) stay with the newest.
    assert pruned == ["v1.0.0", "v1.0.4", "v1.0.5"]
    kept = {v.version: v.status for v in versions.store.versions()}
    assert kept == {
        "v1.0.1": "inactive",
        "v1.0.2": "active",
        "v1.0.3": "canary",
        "v1.0.6": "inactive",
    }
    assert sorted(p.name for p in versions.root.iterdir() if p.is_dir()) == sorted(kept)
    assert sorted(p.name for p in runs.iterdir()) == ["r1", "r2", "r3", "r6"]
    target = versions.rollback_target()
    assert target is not None and target.version == "v1.0.1"
    assert versions.prune(4, runs) == []  # already within the limit
    index = json.loads((versions.root / "versions.json").read_text())
    assert [v["version"] for v in index["versions"]] == sorted(kept)
    nxt = versions.register(make_adapter(tmp_path / "a7", b"w7"))
    assert nxt.version == "v1.0.7"  # names are never reused after a prune
