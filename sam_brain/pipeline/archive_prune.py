"""Pruning the transcript archive within `sources.archive_keep_days` and `sources.archive_max_mb`.

The archive is what re-extraction and a pool rebuild read, so pruning keeps every transcript the
deployed lineage stands on: those with samples in the pool versions that trained the active,
canary and rollback-target adapters. Everything else goes oldest first (by last change), first
past the age limit, then until the archive fits its size cap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sam_brain.errors import NotFound
from sam_brain.store import VersionStatus

if TYPE_CHECKING:
    from sam_brain.home import Home

log = logging.getLogger(__name__)
KEPT_STATUSES = (VersionStatus.ACTIVE, VersionStatus.CANARY)


@dataclass
class ArchivePruneReport:
    files_before: int = 0
    mb_before: float = 0.0
    removed: list[str] = field(default_factory=list)
    protected: int = 0
    mb_after: float = 0.0


def archive_rel(key: str, roots: list[Path]) -> Path | None:
    """Where the sessions collector archives transcript `key` (relative to the archive)."""
    path = Path(key)
    root = next((d for d in roots if path.is_relative_to(d)), None)
    if root is None:
        return None
    rel = path.relative_to(root)
    return rel.parent / f"{rel.name}.gz"


def protected_files(home: Home) -> set[Path]:
    """Archive paths (relative) of transcripts that trained a version we may serve again."""
    versions = [v for v in home.store.versions() if v.status in KEPT_STATUSES]
    target = home.versions.rollback_target()
    if target is not None:
        versions.append(target)
    pool_versions: set[int | None] = set()
    for v in versions:
        try:
            pool_versions.add(home.store.get_run(v.run_id).pool_version)
        except NotFound:  # an imported adapter, or a run pruned from state.db
            pool_versions.add(None)
    keys: set[str] = set()
    for pv in pool_versions:
        try:
            pool = home.pool if pv is None else home.pool.at_version(pv)
        except NotFound:
            pool = home.pool  # compacted away: the current pool is the closest record we have
        keys |= pool.source_keys("sessions")
    roots = [Path(d).expanduser().absolute() for d in home.config.sources.sessions_dirs]
    return {rel for k in keys if (rel := archive_rel(k, roots)) is not None}


def _is_protected(rel: Path, keep: set[Path]) -> bool:
    """A kept main transcript `P/S.jsonl.gz` keeps its subagent files `P/S/subagents/*` too
    (their samples carry the main transcript's key)."""
    if rel in keep:
        return True
    return any(
        rel.parents[i].with_name(rel.parents[i].name + ".jsonl.gz") in keep
        for i in range(len(rel.parents) - 1)
    )


def prune_archive(
    home: Home, *, now: float | None = None, dry_run: bool = False
) -> ArchivePruneReport:
    """Remove archived transcripts beyond the configured age and size limits."""
    cfg = home.config.sources
    report = ArchivePruneReport()
    archive = home.archive_dir
    files = sorted(
        ((p.stat().st_mtime, p.stat().st_size, p) for p in archive.rglob("*.jsonl.gz")),
        key=lambda t: t[0],
    )
    report.files_before = len(files)
    total = sum(size for _, size, _ in files)
    report.mb_before = total / 2**20
    if not files or (cfg.archive_keep_days <= 0 and cfg.archive_max_mb <= 0):
        report.mb_after = report.mb_before
        return report
    keep = protected_files(home)
    now = time.time() if now is None else now
    cap = cfg.archive_max_mb * 2**20 if cfg.archive_max_mb > 0 else float("inf")
    for mtime, size, path in files:  # oldest first
        too_old = cfg.archive_keep_days > 0 and now - mtime > cfg.archive_keep_days * 86400
        if not too_old and total <= cap:
            continue
        if _is_protected(path.relative_to(archive), keep):
            report.protected += 1
            continue
        report.removed.append(str(path.relative_to(archive)))
        total -= size
        if not dry_run:
            path.unlink(missing_ok=True)
    report.mb_after = total / 2**20
    if report.removed and not dry_run:
        log.info("archive pruned: %d transcripts removed", len(report.removed))
    return report
