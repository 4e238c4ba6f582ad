"""Pruning the transcript archive: age and size limits, and the deployed lineage's data is kept.

A real temp home: example transcripts from two projects ingested by the sessions collector (which
writes the gzip archive), a version trained (registered) on the first project's pool version.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sam_brain.config_load import parse_config
from sam_brain.dev.examples import write_example_sessions
from sam_brain.home import Home
from sam_brain.pipeline.archive import ingest_from_archive
from sam_brain.pipeline.archive_prune import prune_archive
from sam_brain.pipeline.ingest import make_collectors, store_result
from tests.adapter_files import write_adapter

OLD = "-home-dev-old"
NEW = "-home-dev-new"
DAY = 86400.0


def open_home(root: Path, **sources: Any) -> Home:
    doc = {
        "data_dir": str(root / "home"),
        "pipeline": {"max_tokens": 32768},
        "sources": {"sessions_dirs": [str(root / "projects")], "quiet_minutes": 0.0, **sources},
    }
    return Home.open(parse_config(doc))


def ingest_sessions(home: Home) -> None:
    store_result(home, "sessions", make_collectors(home)["sessions"].collect(home.store, None))


def archived(home: Home) -> dict[str, set[str]]:
    """Archived files by project folder."""
    out: dict[str, set[str]] = {}
    for p in home.archive_dir.rglob("*.jsonl.gz"):
        rel = p.relative_to(home.archive_dir)
        out.setdefault(rel.parts[0], set()).add(str(rel))
    return out


def age_archive(home: Home, days: float) -> None:
    then = time.time() - days * DAY
    for p in home.archive_dir.rglob("*.jsonl.gz"):
        os.utime(p, (then, then))


def deploy_on_current_pool(home: Home, root: Path) -> str:
    run = home.store.create_run("forced", "mlx", "base", 0, home.pool.version)
    version = home.versions.register(write_adapter(root / "adapter"), run_id=run.run_id).version
    home.versions.activate(version)
    return version


def two_projects(root: Path, **sources: Any) -> Home:
    """Project OLD ingested and trained on (the active version), then project NEW ingested."""
    write_example_sessions(root / "projects", n_sessions=3, project=OLD, seed=1)
    home = open_home(root, **sources)
    ingest_sessions(home)
    deploy_on_current_pool(home, root)
    write_example_sessions(root / "projects", n_sessions=4, project=NEW, seed=2)
    ingest_sessions(home)
    return home


def test_age_limit_prunes_old_transcripts_but_keeps_what_the_active_version_trained_on(
    tmp_path: Path,
) -> None:
    home = two_projects(tmp_path, archive_keep_days=30.0)
    before = archived(home)
    assert len(before[OLD]) >= 3 and len(before[NEW]) >= 4
    # Nothing is past the limit yet: nothing goes.
    assert prune_archive(home).removed == []
    age_archive(home, 45)
    dry = prune_archive(home, dry_run=True)
    assert archived(home) == before  # a dry run removes nothing
    report = prune_archive(home)
    assert sorted(report.removed) == sorted(dry.removed) == sorted(before[NEW])
    assert report.protected == len(before[OLD])
    assert archived(home) == {OLD: before[OLD]}
    # What is left still re-extracts into the pool.
    redo = ingest_from_archive(home, quiet_minutes=0.0)
    assert redo.stored > 0 and redo.dropped["forgotten"] == 0
    home.close()


def test_size_cap_removes_oldest_unprotected_first(tmp_path: Path) -> None:
    home = two_projects(tmp_path, archive_keep_days=0.0, archive_max_mb=2048.0)
    before = archived(home)
    assert prune_archive(home).removed == []  # far under the cap
    news = sorted(home.archive_dir.glob(f"{NEW}/*.jsonl.gz"))
    for i, p in enumerate(news):  # distinct ages: the oldest must go first
        t = time.time() - (100 - i) * DAY
        os.utime(p, (t, t))
    sizes = {str(p.relative_to(home.archive_dir)): p.stat().st_size for p in news}
    total = sum(p.stat().st_size for p in home.archive_dir.rglob("*.jsonl.gz"))
    # A cap that leaves room for all but the two oldest NEW transcripts.
    oldest_two = [str(p.relative_to(home.archive_dir)) for p in news[:2]]
    cap = total - sum(sizes[k] for k in oldest_two) + 1
    home.close()
    home = open_home(tmp_path, archive_keep_days=0.0, archive_max_mb=cap / 2**20)
    report = prune_archive(home)
    assert report.removed == oldest_two
    assert archived(home)[OLD] == before[OLD]
    home.close()


def test_without_a_deployed_version_nothing_is_protected(tmp_path: Path) -> None:
    write_example_sessions(tmp_path / "projects", n_sessions=2, project=OLD, seed=3)
    home = open_home(tmp_path, archive_keep_days=1.0)
    ingest_sessions(home)
    n = sum(len(v) for v in archived(home).values())
    age_archive(home, 2)
    report = prune_archive(home)
    assert len(report.removed) == n and report.protected == 0
    assert archived(home) == {}
    home.close()
