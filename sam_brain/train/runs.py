"""Pruning the `runs/` folder: each run keeps its dataset, checkpoints and log there.

The newest `training.keep_runs` folders stay, and so do, whatever their age, the runs of the
active version, the canary and the rollback target (their data is what the gate and a rollback
point back to) and the run that is training or can still resume.
"""

from __future__ import annotations

import logging
import shutil

from sam_brain.home import Home
from sam_brain.store import VersionStatus
from sam_brain.train.resume import LIVE, resumable_run

log = logging.getLogger(__name__)


def protected_runs(home: Home) -> set[str]:
    """Run ids whose folders are never pruned."""
    keep = set()
    versions = home.versions
    for v in (versions.current(), versions.rollback_target()):
        if v is not None and v.run_id:
            keep.add(v.run_id)
    keep |= {v.run_id for v in home.store.versions() if v.status is VersionStatus.CANARY}
    keep |= {r.run_id for r in home.store.runs(50) if r.status in LIVE}
    resumable = resumable_run(home)
    if resumable is not None:
        keep.add(resumable.run_id)
    return keep


def prune_runs(home: Home, keep: int, also_keep: set[str] | None = None) -> list[str]:
    """Delete run folders beyond the newest `keep` (0 keeps all); returns the pruned names."""
    root = home.runs_dir
    if keep <= 0 or not root.is_dir():
        return []
    protected = protected_runs(home) | (also_keep or set())
    # Oldest first by the store's order (ids share a second); folders it does not know go first.
    order = {r.run_id: i for i, r in enumerate(reversed(home.store.runs(1_000_000)))}
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir()), key=lambda p: (order.get(p.name, -1), p.name)
    )
    doomed = [p for p in folders[: max(len(folders) - keep, 0)] if p.name not in protected]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    if doomed:
        log.info("pruned %d run folder(s) (training.keep_runs = %d)", len(doomed), keep)
    return [p.name for p in doomed]
