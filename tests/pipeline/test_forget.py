"""`samctl data forget`: every selector removes exactly its samples from everything on disk.

Real example transcripts, a real git repository, a real LanceDB pool, dedup index, archive, run
datasets and version registry in a temp home. After each forget: exact counts, the text is in no
file under the home (LanceDB data files and gzip archives included), a forced re-extraction
brings nothing back, the next training dataset holds none of it, and tainted versions are listed.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sam_brain.config_load import parse_config
from sam_brain.dev.examples import write_example_sessions
from sam_brain.home import Home
from sam_brain.pipeline.dedup import DedupIndex
from sam_brain.pipeline.forget import forget
from sam_brain.pipeline.forget_rules import Selector, parse_date
from sam_brain.pipeline.ingest import make_collectors, store_result
from sam_brain.protocols import Sample
from sam_brain.train.dataset import build_dataset
from tests.adapter_files import write_adapter
from tests.sources import make_repo, mark_first_prompt

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")

MARK = "Zebra-Papaya-7731"
ACME = "-home-dev-acme"


class NoCursors:
    def get_cursor(self, key: str) -> str | None:
        return None


def tables(path: Path, i: int) -> str:
    (path / f"tables{i}.py").write_text(f"TABLE_{i} = [{i}, {i + 1}, {i + 2}]\n")
    return f"Add lookup table {i} used by the tokenizer fast path"


class World:
    """A home with sessions from two projects (one marked), a repo, and three trained versions."""

    def __init__(self, root: Path) -> None:
        self.src = root / "projects"
        start = datetime(2026, 1, 1, tzinfo=UTC)
        write_example_sessions(
            self.src, n_sessions=3, project=ACME, cwd="/home/dev/acme", seed=1, start=start
        )
        demo = write_example_sessions(
            self.src, n_sessions=4, seed=2, start=datetime(2026, 3, 1, tzinfo=UTC)
        )
        mark_first_prompt(demo[1], f" (ticket {MARK})")
        self.repo = make_repo(root / "repo", 2, tables)
        doc = {
            "data_dir": str(root / "home"),
            "pipeline": {"max_tokens": 32768},
            "sources": {
                "sessions_dirs": [str(self.src)],
                "git_repos": [str(self.repo)],
                "quiet_minutes": 0.0,
            },
        }
        self.home = Home.open(parse_config(doc))
        self.collectors = make_collectors(self.home)
        home = self.home
        store_result(home, "git", self.collectors["git"].collect(home.store, None))
        self.clean_run = self.run()  # before any session: no marked sample
        store_result(home, "sessions", self.collectors["sessions"].collect(home.store, None))
        self.full_run = self.run()
        self.v_clean = self.version(self.clean_run, root / "a0")
        self.v_full = self.version(self.full_run, root / "a1")
        # Trained later on clean data, but from v_full's adapter (continue_from_active).
        self.v_after = self.version(
            self.run(pool_version=home.store.get_run(self.clean_run).pool_version), root / "a2"
        )

    def run(self, pool_version: int | None = None) -> str:
        home = self.home
        run = home.store.create_run("forced", "mlx", "base", 0, pool_version or home.pool.version)
        if pool_version is None:  # (a run of an older pool version keeps no dataset here)
            build_dataset(home, home.runs_dir / run.run_id / "data")
        return run.run_id

    def version(self, run_id: str, path: Path) -> str:
        return self.home.versions.register(write_adapter(path), run_id=run_id).version

    def samples(self) -> dict[str, Sample]:
        return {s.id: s for s, _ in self.home.pool.samples()}

    def reingest_everything(self) -> dict[str, int]:
        """Extract every source again as if never seen (cursors ignored)."""
        dropped: dict[str, int] = {}
        for name in ("sessions", "git"):
            report = store_result(self.home, name, self.collectors[name].collect(NoCursors(), None))
            # Forgotten sessions are not even parsed; forgotten samples are dropped at storing.
            dropped[name] = report.dropped["forgotten"] + report.skipped["forgotten"]
        return dropped


def blob(s: Sample) -> str:
    return json.dumps(s.to_dict(), ensure_ascii=False).casefold()


def home_texts(data: Path) -> list[tuple[Path, str]]:
    """Every file under the home as text (gzip files decompressed)."""
    out = []
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        out.append((path, raw.decode("utf-8", errors="replace")))
    return out


def holders(data: Path, needle: str) -> list[Path]:
    forms = {needle, json.dumps(needle)[1:-1]}
    return [
        p for p, text in home_texts(data) if any(f.casefold() in text.casefold() for f in forms)
    ]


SELECTORS: dict[str, tuple[Selector, Callable[[Sample], bool]]] = {
    "match": (Selector(match=MARK.lower()), lambda s: MARK.casefold() in blob(s)),
    "project": (
        Selector(project="/home/dev/acme"),
        lambda s: Path(s.source_key).parent.name == ACME,
    ),
    "source": (Selector(source="git"), lambda s: s.source == "git"),
    "before": (
        Selector(before=parse_date("2026-01-01T07:00:00")),
        lambda s: s.source == "sessions" and str(s.meta.get("started")) < "2026-01-01T07:00",
    ),
}


@pytest.mark.parametrize("name", [*SELECTORS, "session"])
def test_forget_by_selector_removes_exactly_and_everywhere(tmp_path: Path, name: str) -> None:
    world = World(tmp_path)
    home = world.home
    before = world.samples()
    if name == "session":
        sid = next(s.group for s in before.values() if Path(s.source_key).parent.name == ACME)
        sel, pick = Selector(session=sid), (lambda s: s.group == sid)
    else:
        sel, pick = SELECTORS[name]
    expected = {i for i, s in before.items() if pick(s)}
    assert 0 < len(expected) < len(before)
    kept_texts = {
        str(m.get("content")) for i, s in before.items() if i not in expected for m in s.messages
    }
    # Texts only forgotten samples have: none of them may survive anywhere under the home.
    needles = [
        str(m["content"])[:80]
        for i in sorted(expected)
        for m in before[i].messages
        if m.get("role") != "system"
        and len(str(m.get("content") or "")) >= 80
        and str(m.get("content")) not in kept_texts
    ]
    needles = [n for n in needles if not any(n in k for k in kept_texts)]
    assert needles and all(holders(home.data, n) for n in needles[:3])  # on disk before
    archived = len(list(home.archive_dir.rglob("*.gz")))

    plan = forget(home, sel, dry_run=True)
    assert plan.samples == len(expected) and home.pool.count() == len(before)
    assert all(holders(home.data, n) for n in needles[:3])  # a dry run changes nothing

    report = forget(home, sel, dry_run=False)
    assert report.samples == report.pool_deleted == len(expected)
    after = world.samples()
    assert set(after) == set(before) - expected  # exactly the selected samples went
    assert report.pool_versions_removed > 0 and home.pool.version_count() == 1
    index = DedupIndex.open(home.dedup_path)
    assert report.dedup_removed == len(expected)
    assert not any(i in index for i in expected) and all(i in index for i in after)
    for needle in needles:
        assert holders(home.data, needle) == [], needle
    if name == "match":
        assert holders(home.data, MARK) == []
        assert report.files["archive_files_rewritten"] >= 1
    if name in ("session", "project", "before"):
        assert report.files["archive_files_deleted"] >= 1
        assert (
            len(list(home.archive_dir.rglob("*.gz")))
            == archived - report.files["archive_files_deleted"]
        )
    event = home.store.events("forgotten")[0]
    assert event["data"]["samples"] == len(expected)
    assert MARK.casefold() not in json.dumps(event).casefold()

    # Versions trained on it are listed; the one trained before it existed is not.
    listed = {v["version"]: v for v in report.versions}
    if name == "source":  # the git commits were in the pool before every run
        assert set(listed) == {world.v_clean, world.v_full, world.v_after}
        assert not any("built_on" in v for v in listed.values())
    else:
        assert world.v_clean not in listed
        assert listed[world.v_full]["run_id"] == world.full_run
        assert listed[world.v_after]["built_on"] == world.v_full

    # Still on disk, read again from scratch: none of it comes back.
    dropped = world.reingest_everything()
    assert sum(dropped.values()) > 0
    assert set(world.samples()) == set(after)
    assert holders(home.data, needles[0]) == []
    if name == "match":  # archived again from the live transcript, without the removed lines
        assert holders(home.data, MARK) == [] and list(home.archive_dir.rglob("*.gz"))
    # The next training's dataset holds none of it.
    nxt = tmp_path / "next"
    build_dataset(home, nxt)
    data = "".join(p.read_text() for p in nxt.glob("*.jsonl"))
    assert data and not any(n in data or json.dumps(n)[1:-1] in data for n in needles)
    home.close()


def test_forget_needs_a_selector_and_records_rules_not_text(tmp_path: Path) -> None:
    world = World(tmp_path)
    home = world.home
    assert Selector().given() == []
    forget(home, Selector(match=MARK), dry_run=False)
    forget(home, Selector(session="no-such-session"), dry_run=False)
    acme = len(list((home.archive_dir / ACME).rglob("*.gz")))
    narrowed = Selector(project="*/acme", before=parse_date("2026-01-01T03:00:00"))
    report = forget(home, narrowed, dry_run=False)  # the first acme session only
    assert report.files["archive_files_deleted"] == 1
    assert len(list((home.archive_dir / ACME).rglob("*.gz"))) == acme - 1
    stones = json.loads((home.data / "forget.json").read_text())
    assert stones["projects"] == [] and "no-such-session" in stones["sessions"]
    assert len(stones["sessions"]) == 2  # and the session that has no sample left
    forget(home, Selector(project="*/acme"), dry_run=False)
    stones = json.loads((home.data / "forget.json").read_text())
    assert stones["projects"] == ["*/acme"]
    assert MARK.casefold() not in (home.data / "forget.json").read_text().casefold()
    # A new transcript of the forgotten project is not even parsed, and counted `forgotten`.
    write_example_sessions(world.src, n_sessions=1, project=ACME, cwd="/home/dev/acme", seed=9)
    report = store_result(home, "sessions", world.collectors["sessions"].collect(home.store, None))
    # The three acme sessions already read, and the new one; counted once each.
    assert report.skipped["forgotten"] == 4 and report.collected == report.stored == 0
    again = world.collectors["sessions"].collect(home.store, None)
    assert again.skipped["forgotten"] == 0 and not again.samples
    # ... and at storing, a sample of it from elsewhere is dropped as `forgotten`.
    new = next((world.src / ACME).glob("*.jsonl"))
    result = world.collectors["sessions"].ingest_file(new)
    assert result.skipped["forgotten"] == 1 and not result.samples
    home.close()


def test_from_archive_reextracts_the_same_samples(tmp_path: Path) -> None:
    from sam_brain.pipeline.archive import ingest_from_archive

    world = World(tmp_path)
    home = world.home
    before = {
        i: (s.source_key, s.messages) for i, s in world.samples().items() if s.source == "sessions"
    }
    # Claude Code deleted the transcripts; the pool was lost: only the archive is left.
    shutil.rmtree(world.src)
    shutil.rmtree(home.data / "pool")
    home.dedup_path.unlink()
    again = Home.open(home.config)
    report = ingest_from_archive(again, quiet_minutes=0.0)
    after = {i: (s.source_key, s.messages) for i, s in ((s.id, s) for s, _ in again.pool.samples())}
    assert report.stored == len(before) and after == before
    assert not list(again.data.glob(".from-archive-*"))  # the unpacked copy is gone
    home.close()
    again.close()


def test_compaction_keeps_limits_and_a_running_trainings_version(tmp_path: Path) -> None:
    from sam_brain.pipeline.ingest import maybe_compact

    doc = {
        "data_dir": str(tmp_path / "home"),
        "pipeline": {"pool_keep_versions": 3, "pool_keep_days": 0},
    }
    home = Home.open(parse_config(doc))
    for i in range(12):
        s = Sample(
            id=f"s{i}",
            source="distill",
            source_key=f"k{i}",
            group=f"g{i}",
            messages=[{"role": "user", "content": f"q{i}"}],
        )
        if i in (4, 8):  # compaction keeps a 1 s margin around the oldest version it keeps
            time.sleep(1.2)
        home.pool.upsert([(s, "train")])
        if i == 8:
            eighth = home.pool.version
        if i == 4:
            pinned = home.pool.version
            home.store.create_run("forced", "mlx", "base", 0, pinned)  # pending: protected
    assert home.pool.version_count() == 13
    maybe_compact(home, force=True)
    left = sorted(int(v["version"]) for v in home.pool._table.list_versions())
    assert left[0] == pinned and home.pool.count_ids_at(pinned, {"s4", "s5"}) == 1
    assert home.pool.count_ids_at(pinned - 1, {"s0"}) is None  # older ones are gone
    assert home.pool.count() == 12
    # Once the run is over its version is no longer protected: the newest 3 (+ margin) stay.
    run = home.store.runs(1)[0]
    home.store.update_run(run.run_id, status="completed")
    maybe_compact(home, force=True)
    left = sorted(int(v["version"]) for v in home.pool._table.list_versions())
    assert left[0] == eighth and home.pool.count_ids_at(pinned, {"s4"}) is None
    assert home.pool.count() == 12 and {s.id for s, _ in home.pool.samples()} == {
        f"s{i}" for i in range(12)
    }
    home.close()


def test_forget_distillation_records_however_short(tmp_path: Path) -> None:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "home")}))
    inbox = home.distill_inbox
    inbox.mkdir(parents=True)
    records = [
        {"id": "r1", "kind": "reasoning", "prompt": "Two plus two?", "answer": "It is four."},
        {"kind": "reasoning", "prompt": "Capital of Peru?", "answer": "It is Lima."},
        {"kind": "reasoning", "prompt": "Colour of snow?", "answer": "It is white."},
    ]
    (inbox / "batch.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    old = time.time() - 60
    os.utime(inbox / "batch.jsonl", (old, old))
    collectors = make_collectors(home)
    assert (
        store_result(home, "distill", collectors["distill"].collect(home.store, None)).stored == 3
    )
    processed = home.data / "distill" / "processed"
    report = forget(home, Selector(match="four"), dry_run=False)
    assert report.samples == 1 and report.files["rows_removed"] == 1
    # No text given: the processed line is found by the record's key (it has no id).
    lima = next(s for s, _ in home.pool.samples() if "Lima" in s.text())
    report = forget(home, Selector(source="distill", session=lima.group), dry_run=False)
    assert report.samples == 1 and home.pool.count() == 1 and report.files["rows_removed"] == 1
    left = "".join(p.read_text() for p in processed.glob("*.jsonl"))
    assert "four" not in left and "Lima" not in left and "white" in left
    # Posted again over the API: both stay out, the third is the same sample as before.
    result, _ = collectors["distill"].ingest_records(records)
    again = store_result(home, "distill", result)
    assert again.dropped["forgotten"] == 2 and home.pool.count() == 1
    home.close()
