"""Rebuilding lost state from what the disk still holds, and setting damaged files aside.

A version folder (`versions/vX.Y.Z/`) is self-describing: its `manifest.json` holds what its
row held, and `versions.json` mirrors every row's status. So a missing, emptied or damaged
`state.db` loses runs, cursors and events (re-derivable: ingest is idempotent) but never a
version: the rows are rebuilt from the folders, never started fresh over them.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from sam_brain.config import DEFAULT_TRAINING
from sam_brain.store import Store, VersionStatus, now_iso, stored_path

log = logging.getLogger(__name__)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def version_folders(root: Path, training: str = DEFAULT_TRAINING) -> dict[str, dict[str, Any]]:
    """Every `vX.Y.Z/` under `root` with a readable manifest: name -> manifest."""
    from sam_brain.versions import version_dir_pattern

    pattern = version_dir_pattern(training)
    found: dict[str, dict[str, Any]] = {}
    if not root.is_dir():
        return found
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and pattern.fullmatch(entry.name):
            manifest = _read_json(entry / "manifest.json")
            if isinstance(manifest, dict):
                found[entry.name] = manifest
    return found


def _index_rows(root: Path) -> dict[str, dict[str, Any]]:
    """Rows of `versions.json` by name; empty when it is missing, truncated or not ours."""
    doc = _read_json(root / "versions.json")
    rows = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(rows, list):
        return {}
    return {str(r["version"]): r for r in rows if isinstance(r, dict) and "version" in r}


def rebuild_versions(store: Store, root: Path) -> list[str]:
    """Recreate the version rows of a store that has none from the folders under `root`.

    Status, sequence, deploy time and gate come from `versions.json` when it is readable; the
    active version otherwise from `current.txt`. A canary's weight is not on disk, so a canary
    comes back inactive. Returns the names rebuilt (none when the store already has rows).
    """
    if store.versions():
        return []
    folders = version_folders(root, store.training)
    if not folders:
        return []
    index = _index_rows(root)
    current = (root / "current.txt").read_text().strip() if (root / "current.txt").is_file() else ""
    statuses = {s.value for s in VersionStatus}
    rows: list[tuple[Any, ...]] = []
    for name, manifest in folders.items():
        seq = int(name.rsplit(".", 1)[1])
        old = index.get(name, {})
        status = str(old.get("status") or ("active" if name == current else "inactive"))
        if status not in statuses or status == VersionStatus.CANARY:
            status = VersionStatus.INACTIVE.value
        rows.append(
            (
                name,
                seq,
                status,
                str(manifest.get("run_id", "")),
                str(manifest.get("base_model", "")),
                stored_path(root / name, store.path.parent),
                str(manifest.get("checksum", "")),
                int(manifest.get("training_samples") or 0),
                json.dumps(manifest.get("metrics") or {}),
                str(manifest.get("description", "")),
                str(manifest.get("created_at") or now_iso()),
                old.get("deployed_at") or (now_iso() if status == "active" else None),
                str(old.get("gate") or ""),
                store.training,
            )
        )
    active = [r for r in rows if r[2] == VersionStatus.ACTIVE]
    for extra in active[:-1]:  # at most one active: the newest keeps it
        rows[rows.index(extra)] = (*extra[:2], VersionStatus.INACTIVE.value, *extra[3:])
    with store.tx() as db:
        count = "SELECT COUNT(*) FROM versions WHERE training=?"
        if db.execute(count, (store.training,)).fetchone()[0]:
            return []  # another process (the daemon, a samctl) rebuilt them first
        db.executemany(
            "INSERT INTO versions(version, seq, status, run_id, base_model, adapter_path,"
            " checksum, training_samples, metrics, description, created_at, deployed_at, gate,"
            " training) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        names = [r[0] for r in rows]
        store.add_event(
            "state_rebuilt",
            {"versions": names, "from": "versions.json" if index else "manifests"},
            db,
        )
    log.warning(
        "state.db had no versions but %d version folder(s) exist: rebuilt %s from their manifests",
        len(names),
        ", ".join(names),
    )
    return names


def set_aside(path: Path) -> Path | None:
    """Rename a damaged file (and SQLite's -wal/-shm next to it) to `<name>.damaged-<time>`."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%dT%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    os.replace(path, target)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.replace(side, target.with_name(target.name + suffix))
    return target
