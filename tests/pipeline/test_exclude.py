"""`sources.exclude`: excluded projects, repos and paths never reach the pool, counted `excluded`.

Real transcripts written by the example generator, real git repositories, a real LanceDB pool.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.dev.examples import write_example_sessions
from sam_brain.home import Home
from sam_brain.pipeline.exclude import PathRules
from sam_brain.pipeline.ingest import ingest, make_collectors
from tests.sources import make_repo


def open_home(root: Path, **sources: Any) -> Home:
    doc = {"data_dir": str(root / "home"), "pipeline": {"max_tokens": 32768}, "sources": sources}
    return Home.open(parse_config(doc))


def two_projects(root: Path) -> Path:
    src = root / "projects"
    write_example_sessions(
        src, n_sessions=3, project="-home-dev-acme", cwd="/home/dev/acme", seed=1
    )
    write_example_sessions(src, n_sessions=4, seed=2)  # /home/dev/demo-project
    return src


def projects(home: Home) -> set[str]:
    """The Claude Code project folders of the pool's samples (their cwd is scrubbed)."""
    return {Path(s.source_key).parent.name for s, _ in home.pool.samples()}


def test_path_rules() -> None:
    rules = PathRules(["~/work/acme", "*/clients/*", "secret-*"])
    home = os.path.expanduser("~")
    assert rules.match(f"{home}/work/acme") and rules.match(f"{home}/work/acme/src/a.py")
    assert not rules.match(f"{home}/work/acme-v2/a.py")  # a sibling is not a child
    assert rules.match("/srv/clients/bank/notes.md") and rules.match("/x/secret-plan/a")
    assert not rules.match("/srv/client/bank") and not rules.match("/x/my-secret-plan")
    # Claude Code names a project folder after its working directory.
    assert rules.match_file(Path("/p") / f"{home.replace('/', '-')}-work-acme" / "s.jsonl")
    assert not PathRules([]) and not PathRules([" "]).match("/anything")


@pytest.mark.parametrize("pattern", ["/home/dev/acme", "acme", "*/acme"])
def test_excluded_project_never_enters_and_is_counted(tmp_path: Path, pattern: str) -> None:
    src = two_projects(tmp_path)
    ref = open_home(tmp_path / "ref", sessions_dirs=[str(src / "-home-dev-demo-project")])
    expected = ingest(ref, make_collectors(ref)["sessions"]).stored
    home = open_home(tmp_path, sessions_dirs=[str(src)], exclude=[pattern])
    collector = make_collectors(home)["sessions"]
    report = ingest(home, collector)
    assert report.skipped["excluded"] == 3  # the three acme sessions, each counted once
    assert projects(home) == {"-home-dev-demo-project"}
    assert home.pool.count() == report.stored == expected > 0
    saved = json.loads(sorted(home.reports_dir.glob("ingest-*.json"))[-1].read_text())
    assert saved["skipped"]["excluded"] == 3
    assert not list(home.archive_dir.rglob("*acme*"))  # not archived either: never read
    again = ingest(home, collector)  # a poll: nothing new, the exclusion is not recounted
    assert again.skipped["excluded"] == 0 and again.skipped["unchanged"] == 7
    assert home.pool.count() == expected
    home.close()
    ref.close()


def test_exclusion_lifted_lets_the_project_in(tmp_path: Path) -> None:
    src = two_projects(tmp_path)
    home = open_home(tmp_path, sessions_dirs=[str(src)], exclude=["/home/dev/acme"])
    first = ingest(home, make_collectors(home)["sessions"]).stored
    home.close()
    home = open_home(tmp_path, sessions_dirs=[str(src)])
    report = ingest(home, make_collectors(home)["sessions"])
    assert report.skipped["unchanged"] == 4 and report.stored > 0
    assert projects(home) == {"-home-dev-acme", "-home-dev-demo-project"}
    assert home.pool.count() == first + report.stored
    home.close()


def module(path: Path, i: int) -> str:
    (path / f"mod{i}.py").write_text(f"def f{i}():\n    return {i}\n")
    return f"Add f{i} returning {i} for the parser tables"


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_excluded_repo_is_not_read(tmp_path: Path) -> None:
    kept = make_repo(tmp_path / "repos" / "open", 3, module)
    hidden = make_repo(tmp_path / "repos" / "client-bank", 4, module)
    home = open_home(tmp_path, git_repos=[str(kept), str(hidden)], exclude=["client-*"])
    report = ingest(home, make_collectors(home)["git"])
    assert report.skipped["excluded"] == 1
    assert report.stored == home.pool.count(kind="sft") == 3
    assert {s.meta["repo"] for s, _ in home.pool.samples()} == {str(kept)}
    home.close()


def test_excluded_docs_and_inbox_files(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "private").mkdir(parents=True)
    (docs / "guide.md").write_text("# Guide\n\n## Install\n\nRun `make install` to set it up.\n")
    (docs / "private" / "plan.md").write_text("# Plan\n\n## Merger\n\nWe buy the rival in May.\n")
    home = open_home(tmp_path, docs_paths=[str(docs)], exclude=["*/private"])
    collectors = make_collectors(home)
    report = ingest(home, collectors["docs"])
    assert report.skipped["excluded"] == 1
    assert {s.meta["file"] for s, _ in home.pool.samples()} == {str(docs / "guide.md")}
    assert not any("rival" in s.text() for s, _ in home.pool.samples())

    home.close()
    home = open_home(tmp_path, exclude=["secret-*"])
    inbox = home.distill_inbox
    inbox.mkdir(parents=True, exist_ok=True)
    record = {"kind": "reasoning", "prompt": "What is 6 times 7?", "answer": "It is 42."}
    for name in ("secret-deal.jsonl", "maths.jsonl"):
        (inbox / name).write_text(json.dumps(record | {"id": name}) + "\n")
        old = time.time() - 60
        os.utime(inbox / name, (old, old))
    report = ingest(home, make_collectors(home)["distill"])
    assert report.skipped["excluded"] == 1 and report.stored == 1
    assert (inbox / "secret-deal.jsonl").exists()  # left where it is, unread
    home.close()


def opened_during(folder: Path, action: Callable[[], object]) -> set[str]:
    """Files under `folder` that were opened while `action` ran (inotify, through watchdog)."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer

    seen: set[str] = set()

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type == "opened":
                seen.add(Path(str(event.src_path)).name)

    observer = Observer()
    observer.schedule(Handler(), str(folder), recursive=True)
    observer.start()
    try:
        time.sleep(0.3)
        action()
        time.sleep(0.5)
    finally:
        observer.stop()
        observer.join(timeout=5)
    return seen


def test_excluded_transcripts_are_never_opened(tmp_path: Path) -> None:
    src = two_projects(tmp_path)
    acme = src / "-home-dev-acme"
    home = open_home(tmp_path, sessions_dirs=[str(src)], exclude=["/home/dev/acme"])
    collector = make_collectors(home)["sessions"]
    assert opened_during(acme, lambda: ingest(home, collector)) == set()
    assert home.pool.count() > 0
    # The check can fail: without the exclusion the same pass opens every acme transcript.
    other = open_home(tmp_path / "other", sessions_dirs=[str(src)])
    names = {p.name for p in acme.rglob("*.jsonl")}
    assert opened_during(acme, lambda: ingest(other, make_collectors(other)["sessions"])) >= names
    home.close()
    other.close()
