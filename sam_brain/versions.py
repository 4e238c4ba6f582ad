"""Checksummed adapter versions: `<data>/versions/vX.Y.Z/` plus a row in the state store.

A named training's registry is `<data>/trainings/NAME/versions/NAME-vX.Y.Z/` on a store view
scoped to it (`Store.scoped`): each lineage numbers, activates and rolls back on its own.

Registering copies the adapter into a temp folder, checksums it, writes `manifest.json`, then
renames the folder into place and records it in one transaction, so a kill never leaves a
half-registered version. `current.txt` mirrors the active version for outside tools; the database
is the source of truth. Every status change goes through `Versions.transition`, the one writer of
a version row's status.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

from sam_brain.config import DEFAULT_TRAINING
from sam_brain.errors import Conflict, PromotionRejected
from sam_brain.fsutil import write_text_atomic
from sam_brain.store import (
    CanaryWeight,
    Store,
    Version,
    VersionStatus,
    now_iso,
    stored_path,
)

log = logging.getLogger(__name__)
ADAPTER_FILES = ("adapters.safetensors", "adapter_config.json")


def checksum_dir(path: Path) -> str:
    """sha256 over every file's relative path and bytes, manifest excluded, in sorted order."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != "manifest.json"):
        h.update(f.relative_to(path).as_posix().encode())
        h.update(b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def sanity_check(adapter_dir: Path) -> None:
    """The adapter files exist and are non-empty: the check before anything is registered."""
    missing = [n for n in ADAPTER_FILES if not (adapter_dir / n).is_file()]
    if missing:
        raise PromotionRejected(f"adapter at {adapter_dir} lacks {', '.join(missing)}")
    if (adapter_dir / "adapters.safetensors").stat().st_size == 0:
        raise PromotionRejected(f"adapter at {adapter_dir} has an empty adapters.safetensors")
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PromotionRejected(
            f"adapter at {adapter_dir}: adapter_config.json is not JSON"
        ) from err
    if not isinstance(config, dict):
        raise PromotionRejected(f"adapter at {adapter_dir}: adapter_config.json is not an object")


def copy_adapter_files(src: Path, dst: Path) -> list[str]:
    """Copy the deployable files of `src` into `dst`, never following a symlink.

    Only regular `.safetensors` / `.json` files (checkpoints and optimizer state stay with the
    run). Symlinks are skipped, not copied: a `leak.json -> /etc/passwd` link must not pull a
    foreign file into versions/; each file is opened with O_NOFOLLOW, so a link swapped in
    after the listing fails to open instead of being read. Returns the skipped names.
    """
    skipped = []
    for f in sorted(src.iterdir()):
        if f.suffix not in (".safetensors", ".json") or f.name[0].isdigit():
            continue
        try:
            fd = os.open(f, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # ELOOP: a symlink; or gone since the listing
            skipped.append(f.name)
            continue
        with open(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                skipped.append(f.name)
                continue
            with open(dst / f.name, "wb") as out:
                shutil.copyfileobj(fh, out, 1 << 20)
        shutil.copystat(f, dst / f.name, follow_symlinks=False)
    if skipped:
        log.warning("not copied from %s (symlinks or not regular files): %s", src, skipped)
    return skipped


def version_name(seq: int, training: str = DEFAULT_TRAINING) -> str:
    """`v1.0.N` in the default training, `NAME-v1.0.N` in a named one (names never cross)."""
    prefix = "" if training == DEFAULT_TRAINING else f"{training}-"
    return f"{prefix}v1.0.{seq}"


VERSION_DIR = re.compile(r"v1\.0\.(\d+)")
"""A version folder's name, with its sequence number."""


def version_dir_pattern(training: str) -> re.Pattern[str]:
    """A version folder's name in `training`'s lineage, with its sequence number."""
    if training == DEFAULT_TRAINING:
        return VERSION_DIR
    return re.compile(re.escape(training) + r"-v1\.0\.(\d+)")


class Versions:
    """The version registry of one home."""

    def __init__(self, store: Store, root: Path) -> None:
        self.store = store
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, version: str) -> Path:
        return self.root / version

    def _free_name(self) -> tuple[int, str]:
        """The next sequence number and name, past every number the registry or the disk uses.

        A folder on disk without a row (a registration killed before its commit, or a state.db
        lost or rebuilt) still holds a user's adapter: its name is skipped, never reused.
        """
        seq = self.store.next_seq()
        training = self.store.training
        pattern = version_dir_pattern(training)
        for entry in self.root.iterdir():
            m = pattern.fullmatch(entry.name)
            if m:
                seq = max(seq, int(m.group(1)) + 1)
        while self.path(version_name(seq, training)).exists():
            seq += 1
        return seq, version_name(seq, training)

    def register(
        self,
        adapter_dir: Path,
        *,
        run_id: str = "",
        base_model: str = "",
        training_samples: int = 0,
        metrics: dict[str, Any] | None = None,
        description: str = "",
        status: VersionStatus = VersionStatus.INACTIVE,
        provenance: dict[str, Any] | None = None,
    ) -> Version:
        """Copy an adapter into the registry as the next version."""
        sanity_check(adapter_dir)
        seq, name = self._free_name()
        final = self.path(name)
        tmp = self.root / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            skipped = copy_adapter_files(adapter_dir, tmp)
            linked = [n for n in ADAPTER_FILES if n in skipped]
            if linked:
                raise PromotionRejected(
                    f"adapter at {adapter_dir}: {', '.join(linked)} is a symlink;"
                    " symlinks are never followed, copy the real file in"
                )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        digest = checksum_dir(tmp)
        manifest = {
            "version": name,
            "run_id": run_id,
            "base_model": base_model,
            "training_samples": training_samples,
            "training": self.store.training,
            "metrics": metrics or {},
            "checksum": digest,
            "created_at": now_iso(),
            "description": description,
            **(provenance or {}),  # pool version, base hash: what the version was built from
        }
        old_manifest = tmp / "manifest.json"
        if old_manifest.exists():  # the trainer's manifest is kept under its own name
            old_manifest.rename(tmp / "train_manifest.json")
            digest = checksum_dir(tmp)
            manifest["checksum"] = digest
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        if final.exists():  # appeared since _free_name looked: never replace a version's files
            shutil.rmtree(tmp, ignore_errors=True)
            raise Conflict(f"{final} appeared during registration; nothing was overwritten")
        os.replace(tmp, final)
        with self.store.tx() as db:
            db.execute(
                "INSERT INTO versions(version, seq, status, run_id, base_model, adapter_path,"
                " checksum, training_samples, metrics, description, created_at, training)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    seq,
                    status,
                    run_id,
                    base_model,
                    stored_path(final, self.store.path.parent),
                    digest,
                    training_samples,
                    json.dumps(metrics or {}),
                    description,
                    manifest["created_at"],
                    self.store.training,
                ),
            )
            self.store.add_event("version_registered", {"version": name, "run_id": run_id}, db)
        self.write_index()
        return self.store.get_version(name)

    def verify(self, version: str) -> None:
        """Raise PromotionRejected when the stored files no longer match their checksum."""
        v = self.store.get_version(version)
        path = Path(v.adapter_path)
        if not path.is_dir():
            raise PromotionRejected(f"{version}: adapter folder {path} is missing")
        actual = checksum_dir(path)
        if actual != v.checksum:
            raise PromotionRejected(f"{version}: checksum mismatch (files changed or corrupt)")

    def activate(self, version: str, reason: str = "deploy") -> Version:
        """Make `version` the active one (previous active becomes inactive)."""
        return self.transition(
            version,
            VersionStatus.ACTIVE,
            event="version_activated",
            data={"version": version, "reason": reason},
        )

    def transition(
        self,
        version: str,
        to: VersionStatus,
        *,
        event: str,
        data: dict[str, Any],
        demote_active_to: VersionStatus = VersionStatus.INACTIVE,
        canary: CanaryWeight | None = None,
    ) -> Version:
        """Move `version` to status `to` with its event in one transaction.

        Going active verifies the files, demotes the current active version (to
        `demote_active_to`), stamps `deployed_at` and rewrites `current.txt`; going canary
        verifies the files and records `canary` (its weight); leaving canary clears the weight.

        Raises:
            NotFound: No such version.
            PromotionRejected: Going active or canary, and the files no longer match their checksum.
        """
        before = self.store.get_version(version)
        if to in (VersionStatus.ACTIVE, VersionStatus.CANARY):
            self.verify(version)
        with self.store.tx() as db:
            self._write_status(db, version, to, demote_active_to, self.store.training)
            if to is VersionStatus.CANARY:
                self.store.set_canary(canary or CanaryWeight(version, 0, now_iso()), db)
            elif before.status is VersionStatus.CANARY:
                self.store.set_canary(None, db)
            self.store.add_event(event, data, db)
        if to is VersionStatus.ACTIVE:
            write_text_atomic(self.root / "current.txt", version + "\n")
        self.write_index()
        return self.store.get_version(version)

    def set_gate(self, version: str, gate: str, reasons: list[str]) -> Version:
        """Record the gate's verdict on a version: "passed" or "ungated" (too little data)."""
        with self.store.tx() as db:
            db.execute("UPDATE versions SET gate=? WHERE version=?", (gate, version))
            self.store.add_event(
                "version_gate", {"version": version, "gate": gate, "reasons": reasons}, db
            )
        self.write_index()
        return self.store.get_version(version)

    @staticmethod
    def _write_status(
        db: sqlite3.Connection,
        version: str,
        to: VersionStatus,
        demote_active_to: VersionStatus,
        training: str,
    ) -> None:
        if to is VersionStatus.ACTIVE:  # one active version per training
            db.execute(
                "UPDATE versions SET status=? WHERE status=? AND version<>? AND training=?",
                (demote_active_to.value, VersionStatus.ACTIVE.value, version, training),
            )
            db.execute(
                "UPDATE versions SET status=?, deployed_at=? WHERE version=?",
                (to.value, now_iso(), version),
            )
        else:
            db.execute("UPDATE versions SET status=? WHERE version=?", (to.value, version))

    def current(self) -> Version | None:
        return self.store.active_version()

    def rollback_target(self) -> Version | None:
        """The most recently deployed version other than the active one that is still good."""
        active = self.store.active_version()
        candidates = [
            v
            for v in self.store.versions()
            if v.deployed_at
            and v.status is VersionStatus.INACTIVE
            and (active is None or v.version != active.version)
        ]
        candidates.sort(key=lambda v: (v.deployed_at or "", v.seq), reverse=True)
        return candidates[0] if candidates else None

    def rollback(self, version: str | None = None, reason: str = "manual") -> Version:
        """Deactivate the active version (marked rolled_back) and activate the target."""
        active = self.store.active_version()
        if version is None:
            target = self.rollback_target()
            if target is None:
                raise Conflict("nothing to roll back to: no earlier deployed version")
        else:
            target = self.store.get_version(version)
            if active is not None and target.version == active.version:
                raise Conflict(f"{version} is already the active version")
        return self.transition(
            target.version,
            VersionStatus.ACTIVE,
            event="rollback",
            data={
                "from": active.version if active else None,
                "to": target.version,
                "reason": reason,
            },
            demote_active_to=VersionStatus.ROLLED_BACK,
        )

    def prune(self, keep: int, runs_dir: Path | None = None) -> list[str]:
        """Delete the oldest versions beyond `keep` (0: keep all), with their training run folders.

        The active version, the canary and the rollback target are never pruned, so at most
        `keep` versions stay unless more than that are protected. Returns the pruned names.
        """
        if keep <= 0:
            return []
        every = self.store.versions()  # oldest first
        active, target = self.current(), self.rollback_target()
        protected = {v.version for v in (active, target) if v is not None}
        protected |= {v.version for v in every if v.status is VersionStatus.CANARY}
        excess = len(every) - keep
        doomed = [v for v in every if v.version not in protected][: max(excess, 0)]
        if not doomed:
            return []
        names = [v.version for v in doomed]
        with self.store.tx() as db:
            db.executemany("DELETE FROM versions WHERE version=?", [(n,) for n in names])
            self.store.add_event("versions_pruned", {"versions": names, "keep": keep}, db)
        # Rows first: a kill now leaves orphan folders (harmless), never a row without files.
        kept_runs = {v.run_id for v in self.store.versions()}
        for v in doomed:
            shutil.rmtree(self.path(v.version), ignore_errors=True)
            if runs_dir is not None and v.run_id and v.run_id not in kept_runs:
                shutil.rmtree(runs_dir / v.run_id, ignore_errors=True)
        self.write_index()
        return names

    def get(self, version: str) -> Version:
        return self.store.get_version(version)

    def write_index(self) -> None:
        """Mirror the version index to `versions.json` for outside tools (the store is the truth)."""
        doc = {"versions": [v.to_dict() for v in self.store.versions()]}
        write_text_atomic(self.root / "versions.json", json.dumps(doc, indent=2) + "\n")
