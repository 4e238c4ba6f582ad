"""Health checks of a home, each a one-line finding with its fix: `samctl doctor` and start-up.

Every check opens only what it needs, so one damaged part (state.db, the pool) never hides the
state of the others. `active_adapter_problem` and `heal_active` are also what the daemon runs at
start and on each monitor tick: a damaged active adapter is rolled back, never served.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from sam_brain.errors import PromotionRejected, SamBrainError
from sam_brain.recovery import version_folders
from sam_brain.store import Store, Version, VersionStatus
from sam_brain.versions import Versions, checksum_dir, sanity_check

log = logging.getLogger(__name__)

DAMAGED = "active adapter damaged"
"""How the reason of an automatic rollback of a damaged adapter starts (status looks for it)."""

MIN_FREE_BYTES = 1 << 30
"""Below this much free space a training run or an export may not fit: a warning."""


@dataclass(frozen=True)
class Finding:
    """One result: `ok` False is a problem; `fix` says what to run or do about it."""

    check: str
    ok: bool
    message: str
    fix: str = ""

    def line(self) -> str:
        mark = "ok     " if self.ok else "PROBLEM"
        return f"{mark} {self.check}: {self.message}" + (f" -> fix: {self.fix}" if self.fix else "")


def safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a complete safetensors file (header parses, sizes add up), or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if n <= 0 or 8 + n > size:
                return f"{path.name} has a broken header (length {n}, file {size} bytes)"
            header = json.loads(fh.read(n))
    except (OSError, ValueError) as err:
        return f"{path.name} is unreadable ({err})"
    if not isinstance(header, dict):
        return f"{path.name} has a header that is not an object"
    ends = [
        int(v["data_offsets"][1])
        for k, v in header.items()
        if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v
    ]
    if not ends or 8 + n + max(ends) != size:
        return f"{path.name} is truncated or padded ({size} bytes, header says {8 + n + max(ends or [0])})"
    return None


def adapter_problem(v: Version) -> str | None:
    """Why version `v` cannot be served (files missing, checksum or format broken), or None."""
    path = Path(v.adapter_path)
    if not path.is_dir():
        return f"{v.version}: adapter folder {path} is missing"
    try:
        sanity_check(path)
    except PromotionRejected as err:
        return f"{v.version}: {err}"
    if checksum_dir(path) != v.checksum:
        return f"{v.version}: files do not match their checksum (changed or corrupt)"
    bad = safetensors_problem(path / "adapters.safetensors")
    return f"{v.version}: {bad}" if bad else None


def heal_active(versions: Versions) -> str | None:
    """Roll a damaged active adapter back to the newest healthy deployed version (or the base).

    Returns the one line saying what happened, or None when the active version is healthy.
    """
    active = versions.current()
    if active is None:
        return None
    problem = adapter_problem(active)
    if problem is None:
        return None
    candidates = [
        v
        for v in versions.store.versions()
        if v.version != active.version and v.status is VersionStatus.INACTIVE and v.deployed_at
    ]
    candidates.sort(key=lambda v: (v.deployed_at or "", v.seq), reverse=True)
    for target in candidates:
        if adapter_problem(target) is None:
            versions.rollback(target.version, reason=f"{DAMAGED}: {problem}")
            line = f"active adapter damaged ({problem}); rolled back to {target.version}"
            log.warning("%s", line)
            return line
    versions.transition(
        active.version,
        VersionStatus.ROLLED_BACK,
        event="rollback",
        data={"from": active.version, "to": None, "reason": f"{DAMAGED}: {problem}"},
    )
    (versions.root / "current.txt").unlink(missing_ok=True)
    line = f"active adapter damaged ({problem}); no healthy earlier version: serving the base"
    log.warning("%s", line)
    return line


def check_state(data: Path) -> tuple[Store | None, Finding]:
    path = data / "state.db"
    try:
        store = Store(path)
    except SamBrainError as err:
        return None, Finding("state.db", False, str(err), "samctl doctor --repair")
    return store, Finding("state.db", True, f"{path} passes quick_check")


def check_pool(data: Path) -> Finding:
    """Open the pool and read every row: a damaged manifest or data file shows here."""
    from sam_brain.home import pool_damaged
    from sam_brain.pool import Pool

    root = data / "pool"
    if not root.exists():
        return Finding("pool", True, "no pool yet")
    try:
        pool = Pool(root)
        rows = sum(1 for _ in pool.samples())
    except (RuntimeError, OSError, ValueError) as err:
        msg = str(pool_damaged(root, str(err)))
        return Finding(
            "pool",
            False,
            msg.split("; restore")[0],
            "samctl doctor --repair"
            " (restores the previous LanceDB version), or move the folder aside and"
            " run `samctl ingest sessions --from-archive`",
        )
    return Finding("pool", True, f"{rows} samples readable at version {pool.version}")


def check_versions(store: Store | None, root: Path) -> list[Finding]:
    """Each row's folder and checksum, folders without a row, versions.json against the rows."""
    found: list[Finding] = []
    disk = version_folders(root)
    rows = store.versions() if store is not None else []
    for v in rows:
        problem = adapter_problem(v)
        if problem and v.status in (VersionStatus.ACTIVE, VersionStatus.CANARY):
            fix = "samctl doctor --repair (rolls back to the newest healthy version)"
            if v.status is VersionStatus.CANARY:
                fix = "samctl rollback (ends the canary)"
            found.append(Finding("version", False, problem, fix))
        elif problem:
            found.append(
                Finding(
                    "version",
                    False,
                    problem,
                    "it is never served again (deploy and rollback verify checksums); keep it"
                    " for inspection, pruning removes it in time",
                )
            )
    orphans = sorted(set(disk) - {v.version for v in rows})
    if orphans and store is not None:
        found.append(
            Finding(
                "versions",
                False,
                f"folders without a row: {', '.join(orphans)} (their names are never reused)",
                "kept as they are; remove them by hand if unwanted",
            )
        )
    try:
        doc = json.loads((root / "versions.json").read_text(encoding="utf-8"))
        listed = [str(r["version"]) for r in doc["versions"]]
    except (OSError, ValueError, KeyError, TypeError):
        listed = None
    if store is not None and rows and listed != [v.version for v in rows]:
        found.append(
            Finding(
                "versions.json",
                False,
                "missing, damaged or stale",
                "samctl doctor --repair (or start the daemon) rewrites it",
            )
        )
    good = len(rows) - sum(1 for f in found if f.check == "version")
    found.insert(0, Finding("versions", True, f"{good} of {len(rows)} versions intact"))
    return found


def check_permissions(home: Path, data: Path) -> list[Finding]:
    """The home is not writable by others; token-like files are readable by the owner only."""
    found: list[Finding] = []
    for folder in {home, data}:
        if folder.is_dir() and folder.stat().st_mode & stat.S_IWOTH:
            found.append(
                Finding(
                    "permissions", False, f"{folder} is writable by everyone", f"chmod o-w {folder}"
                )
            )
    for folder in {home, data}:
        for f in sorted(folder.glob("*token*")) if folder.is_dir() else []:
            if f.is_file() and f.stat().st_mode & 0o077:
                mode = oct(f.stat().st_mode & 0o777)
                found.append(
                    Finding(
                        "permissions",
                        False,
                        f"{f} is readable by others ({mode})",
                        f"chmod 600 {f}",
                    )
                )
    if not found:
        found.append(Finding("permissions", True, "home and token files are private"))
    return found


def check_disk(data: Path) -> Finding:
    free = shutil.disk_usage(data).free
    gb = free / (1 << 30)
    if free < MIN_FREE_BYTES:
        return Finding(
            "disk",
            False,
            f"only {gb:.2f} GB free under {data}",
            "free space, or lower deployment.keep_versions",
        )
    return Finding("disk", True, f"{gb:.1f} GB free")


def diagnose(home: Path, data: Path) -> list[Finding]:
    """Every check, in order: state.db, pool, versions, permissions, disk."""
    store, state = check_state(data)
    try:
        found = [state, check_pool(data)]
        found += check_versions(store, data / "versions")
        found += check_permissions(home, data)
        found.append(check_disk(data))
    finally:
        if store is not None:
            store.close()
    return found


def _manifest_version(path: Path) -> int:
    # Lance names manifests either N.manifest or (newer) u64::MAX - N, so the latest sorts first.
    n = int(path.stem)
    return (1 << 64) - 1 - n if n > (1 << 63) else n


def repair_pool(data: Path) -> str | None:
    """Set aside damaged latest manifests until an earlier pool version reads whole.

    Never removes the last manifest (LanceDB would then start an empty table) and puts every
    manifest back when no earlier version reads. Returns what it did, or None if nothing to do.
    """
    if check_pool(data).ok:
        return None
    folder = data / "pool" / "samples.lance" / "_versions"
    manifests = sorted(folder.glob("*.manifest"), key=_manifest_version, reverse=True)
    aside = data / "pool" / f"damaged-{time.strftime('%Y%m%dT%H%M%S')}"
    moved: list[Path] = []
    for latest in manifests[:-1]:
        aside.mkdir(exist_ok=True)
        os.replace(latest, aside / latest.name)
        moved.append(latest)
        if check_pool(data).ok:
            return (
                f"pool restored to version {_manifest_version(manifests[len(moved)])};"
                f" {len(moved)} damaged manifest(s) set aside in {aside}"
            )
    for latest in moved:  # nothing earlier reads either: leave the pool as it was
        os.replace(aside / latest.name, latest)
    if aside.is_dir():
        aside.rmdir()
    return (
        "no earlier pool version reads whole; move the pool folder aside and run"
        " `samctl ingest sessions --from-archive` to rebuild it"
    )
