"""Every kind of bad input is counted under a named reason; good lines still become samples."""

from __future__ import annotations

import json
import os
from pathlib import Path

from collectors.sessions import SessionCollector
from sam_brain.dev.examples import write_example_sessions


class NoCursors:
    def get_cursor(self, key: str) -> str | None:
        return None


def test_bad_files_and_lines_are_counted_and_never_fatal(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    main = write_example_sessions(root, n_sessions=1, seed=5)[0]
    good = SessionCollector(dirs=[root], quiet_minutes=0).collect(NoCursors())
    assert good.samples
    project = main.parent
    lines = main.read_bytes().splitlines(keepends=True)
    # The same session with a huge line, a NUL run, a torn double object and a truncated tail.
    huge = json.dumps({"type": "user", "blob": "x" * (10 * 2**20 + 10)}).encode() + b"\n"
    torn = lines[1].rstrip(b"\n")[:40] + lines[1]
    damaged = [*lines[:1], huge, b"\x00" * 64 + b"\n", torn, *lines[2:], b'{"type": "user", "mes']
    main.write_bytes(b"".join(damaged))
    (project / "empty.jsonl").write_bytes(b"")
    (project / "binary.jsonl").write_bytes(os.urandom(4096))
    (project / "loop-a.jsonl").symlink_to(project / "loop-b.jsonl")
    (project / "loop-b.jsonl").symlink_to(project / "loop-a.jsonl")
    (root / "dirloop").symlink_to(root)

    result = SessionCollector(dirs=[root], quiet_minutes=0).collect(NoCursors())
    # The damaged session still yields the same samples as before.
    assert sorted(s.id for s in result.samples) == sorted(s.id for s in good.samples)
    for reason in ("line_too_long", "nul_line", "truncated_last_line", "broken_link"):
        assert result.skipped[reason] >= 1, (reason, dict(result.skipped))
    assert result.skipped["undecodable"] + result.skipped["bad_json"] >= 1  # the binary file
    assert result.skipped["empty_session"] >= 1  # the 0-byte file


def test_a_file_deleted_before_it_is_read(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    gone = write_example_sessions(root, n_sessions=1, seed=6)[0]
    gone.unlink()
    result = SessionCollector(dirs=[root], quiet_minutes=0).collect(NoCursors(), [gone])
    assert result.samples == [] and result.skipped["missing_file"] == 1
