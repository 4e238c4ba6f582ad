"""`samctl data forget`, `samctl data compact` and `samctl ingest sessions --from-archive`.

In-process `main()` on a real home: a real LanceDB pool ingested from example transcripts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sam_brain.config_load import load_config
from sam_brain.control.cli import main
from sam_brain.dev.examples import write_example_sessions
from sam_brain.home import Home
from tests.sources import mark_first_prompt

MARK = "Quokka-Lantern-5512"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(h))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    src = tmp_path / "projects"
    paths = write_example_sessions(src, n_sessions=3, seed=4)
    mark_first_prompt(paths[2], f" (see {MARK})")
    (h / "config.toml").write_text(
        f'[api]\nport = 9\n[sources]\nsessions_dirs = ["{src}"]\nquiet_minutes = 0.0\n'
    )
    assert main(["ingest", "sessions", str(src), "--now", "--json"]) == 0
    return Home.open(load_config())


def marked(home: Home) -> set[str]:
    return {
        s.id
        for s, _ in home.pool.samples()
        if MARK.lower() in json.dumps(s.to_dict(), ensure_ascii=False).lower()
    }


def test_forget_asks_counts_then_forgets(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    total, hit = home.pool.count(), marked(home)
    assert hit
    code, _, err = run(capsys, "data", "forget", "--match", MARK.lower())
    assert code == 2 and "--yes" in err  # no terminal to ask on: refused, nothing changed
    code, _, err = run(capsys, "data", "forget")
    assert code == 2 and "at least one of" in err
    code, _, err = run(capsys, "data", "forget", "--before", "yesterday", "--yes")
    assert code == 2 and "--before" in err
    code, out, _ = run(capsys, "data", "forget", "--match", MARK.lower(), "--dry-run", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["dry_run"] and plan["samples"] == len(hit)
    assert home.pool.count() == total and marked(home) == hit

    code, out, _ = run(capsys, "data", "forget", "--match", MARK.lower(), "--yes")
    assert code == 0 and f"samples: {len(hit)}" in out and "no version was trained on it" in out
    # This home was opened before the forget (as the daemon's is): it reads the new pool.
    assert home.pool.count() == total - len(hit) and not marked(home)
    assert MARK not in out

    out_file = home.data.parent / "export.jsonl"
    assert run(capsys, "data", "export", "--out", str(out_file))[0] == 0
    assert out_file.read_text() and MARK.lower() not in out_file.read_text().lower()
    # Re-extraction from the archive brings none of it back (the archive lost those lines).
    code, out, _ = run(capsys, "ingest", "sessions", "--from-archive", "--now", "--json")
    report = json.loads(out)
    assert code == 0 and report["collected"] > 0 and not marked(home)
    code, out, _ = run(capsys, "data", "compact", "--json")
    assert code == 0 and json.loads(out)["versions_now"] >= 1
    home.close()


def test_ingest_needs_paths_or_from_archive(home: Home, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert run(capsys, "ingest", "sessions")[0] == 1
    assert run(capsys, "ingest", "git", "--from-archive")[0] == 1
    ids = {s.id for s, _ in home.pool.samples()}
    code, out, _ = run(capsys, "ingest", "sessions", "--from-archive", "--now", "--json")
    report = json.loads(out)
    # The same samples again, by id: nothing new inserted, every one updated in place.
    assert code == 0 and report["stored"] == len(ids) and report["inserted"] == 0
    assert {s.id for s, _ in home.pool.samples()} == ids
    home.close()
