"""`samctl data forget`: take samples back out of everything SAM Brain keeps.

Under the pool's write lock (ingest waits): the selected samples are found, tombstones are
written first (so a crash part-way never lets them be ingested again), then the pool is
rewritten without them and every older LanceDB version is removed (`Pool.purge`), their keys
leave the dedup index (compacted, so no journal keeps them), the archive and the files under
the home lose them (`forget_files`), and a `forgotten` event records the counts, never content.
The report lists the runs whose pool version held any of the samples and the versions they
produced (and, with `training.continue_from_active`, the versions trained on top of those), so
the user can retrain or delete them.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sam_brain.home import Home
from sam_brain.pipeline.dedup import DedupIndex
from sam_brain.pipeline.forget_files import forget_archive, forget_in_files
from sam_brain.pipeline.forget_rules import (
    Matcher,
    Selector,
    Tombstones,
    contents,
    digest,
    long_contents,
    row_digest,
    session_of,
)
from sam_brain.pool import file_lock
from sam_brain.protocols import Sample


def tombstones_path(home: Home) -> Any:
    return home.data / "forget.json"


@dataclass
class ForgetReport:
    """What a forget did (or, with `dry_run`, would do): counts and version names only."""

    dry_run: bool
    selectors: list[str]
    samples: int = 0
    by_source: Counter[str] = field(default_factory=Counter)
    sessions: int = 0
    pool_deleted: int = 0
    pool_versions_removed: int = 0
    dedup_removed: int = 0
    files: Counter[str] = field(default_factory=Counter)
    runs: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


@dataclass
class _Selection:
    samples: list[tuple[Sample, float]]  # (sample, first_seen)
    kept_digests: set[str]
    kept_sessions: set[str]
    kept_keys: set[str]


def _select(home: Home, sel: Selector) -> _Selection:
    chosen: list[tuple[Sample, float]] = []
    kept: set[str] = set()
    kept_sessions: set[str] = set()
    kept_keys: set[str] = set()
    for row in home.pool.rows_with_data():
        sample = Sample(**json.loads(row["data"]))
        if sel.selects(sample, row["first_seen"]):
            chosen.append((sample, row["first_seen"]))
        else:
            kept.update(digest(c) for c in long_contents(sample))
            kept_sessions.add(session_of(sample))
            kept_keys.add(sample.source_key)
    return _Selection(chosen, kept, kept_sessions, kept_keys)


def forget(home: Home, sel: Selector, *, dry_run: bool) -> ForgetReport:
    """Forget every sample `sel` selects (see the module doc); `dry_run` changes nothing."""
    report = ForgetReport(dry_run=dry_run, selectors=sel.given())
    with file_lock(home.pool.lock_path):
        found = _select(home, sel)
        samples = [s for s, _ in found.samples]
        ids = {s.id for s in samples}
        report.samples = len(samples)
        report.by_source.update(s.source for s in samples)
        sessions = {session_of(s) for s in samples if s.source == "sessions"}
        report.sessions = len(sessions)
        texts = [c for s in samples for c in contents(s)]
        kept_keys = found.kept_keys
        matcher = Matcher(
            texts,
            found.kept_digests,
            sel.match,
            rows=(row_digest(s.messages) for s in samples),
            keys={s.source_key for s in samples if s.source == "distill"} - kept_keys,
        )
        _affected(home, report, ids, min((f for _, f in found.samples), default=None))
        stones = Tombstones.load(tombstones_path(home))
        if not dry_run:
            hashes = {digest(c) for s in samples for c in long_contents(s)} - found.kept_digests
            stones.add(ids, hashes, sel)
            stones.save()
            if ids:
                before = home.pool.version_count()
                report.pool_deleted = home.pool.purge(ids)
                report.pool_versions_removed = max(0, before + 1 - home.pool.version_count())
                report.dedup_removed = _forget_keys(home, ids)
        whole = (sessions - found.kept_sessions) | ({sel.whole_session} - {""})
        lines: set[str] = set()
        project = sel.whole_project
        report.files.update(
            forget_archive(
                home.archive_dir, whole, project, matcher, dry_run=dry_run, removed_lines=lines
            )
        )
        if not dry_run and (whole or lines):
            # Whole sessions are not read again at all; stripped lines are not archived again.
            stones.sessions.update(whole)
            stones.lines.update(lines)
            stones.save()
        files = forget_in_files(home.data, matcher, dry_run=dry_run)
        report.files.update(files.counts)
        _mark_runs(home, report, files.runs)
        if not dry_run:
            home.store.add_event("forgotten", _event(report))
    return report


def _forget_keys(home: Home, ids: set[str]) -> int:
    """Remove the ids from the dedup index and write a fresh snapshot (no journal keeps them)."""
    index = DedupIndex.open(home.dedup_path, threshold=home.config.pipeline.dedup_threshold)
    present = [i for i in ids if i in index]
    for key in present:
        index.remove(key)
    if present:
        index.snapshot_on_save()
        index.save()
    return len(present)


def _affected(home: Home, report: ForgetReport, ids: set[str], oldest: float | None) -> None:
    """Runs whose pool version held any of `ids`, then the versions they and their heirs made."""
    if not ids:
        return
    for run in home.store.runs(100_000):
        held = home.pool.count_ids_at(run.pool_version, ids) if run.pool_version else None
        if held is None:  # that pool version was compacted away: judge by first-seen time
            created = datetime.fromisoformat(run.created_at).timestamp()
            if oldest is None or created < oldest:
                continue
            evidence = "pool version gone; samples were in the pool before the run"
        elif held:
            evidence = f"{held} of them in pool version {run.pool_version}"
        else:
            continue
        report.runs.append({"run_id": run.run_id, "status": run.status, "evidence": evidence})
    _list_versions(home, report)


def _mark_runs(home: Home, report: ForgetReport, runs: set[str]) -> None:
    """Runs whose dataset files held forgotten rows are affected whatever the pool says."""
    known = {r["run_id"] for r in report.runs}
    new = sorted(runs - known)
    for run_id in new:
        report.runs.append(
            {"run_id": run_id, "status": "", "evidence": "its dataset held forgotten rows"}
        )
    if new:
        _list_versions(home, report)


def _list_versions(home: Home, report: ForgetReport) -> None:
    runs = {r["run_id"] for r in report.runs}
    stacked = home.config.training.continue_from_active
    out: list[dict[str, Any]] = []
    tainted: list[str] = []
    for v in sorted(home.store.versions(), key=lambda v: v.seq):
        if v.run_id and v.run_id in runs:
            out.append({"version": v.version, "status": str(v.status), "run_id": v.run_id})
            tainted.append(v.version)
        elif stacked and tainted and v.run_id:
            # Each run starts from the active adapter, so what came after inherits the data.
            out.append(
                {
                    "version": v.version,
                    "status": str(v.status),
                    "run_id": v.run_id,
                    "built_on": tainted[0],
                }
            )
    report.versions = out


def _event(report: ForgetReport) -> dict[str, Any]:
    return {
        "selectors": report.selectors,
        "samples": report.samples,
        "by_source": dict(report.by_source),
        "sessions": report.sessions,
        "pool_deleted": report.pool_deleted,
        "pool_versions_removed": report.pool_versions_removed,
        "dedup_removed": report.dedup_removed,
        "files": dict(report.files),
        "versions": [v["version"] for v in report.versions],
    }
