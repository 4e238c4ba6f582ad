"""Which transcripts the sessions collector leaves unread: `sources.exclude` and forgotten ones.

Path checks come first (the file, and its Claude Code project folder named after the working
directory), so most excluded transcripts are never opened; only then are the first lines read
for the recorded `cwd`. Forgotten sessions and projects come from the home's `forget.json`
(`samctl data forget`), re-read whenever it changes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from sam_brain.pipeline.exclude import EXCLUDED, PathRules
from sam_brain.pipeline.forget_rules import Tombstones, load_cached


def peek_field(path: Path, field: str) -> str:
    """A string field named by the first lines of a transcript ("" when none is found)."""
    try:
        with path.open("rb") as fh:
            for _, raw in zip(range(20), fh, strict=False):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get(field), str):
                    return str(rec[field])
    except OSError:
        return ""
    return ""


class SessionFilter:
    """`why_not(main)`: "excluded", "forgotten" or None for a main transcript."""

    def __init__(self, exclude: Sequence[str] = (), forget_file: Path | None = None) -> None:
        self.rules = PathRules(exclude)
        self.forget_file = forget_file

    def tombstones(self) -> Tombstones:
        return load_cached(self.forget_file) if self.forget_file else Tombstones(Path())

    def why_not(self, main: Path) -> str | None:
        if self.excluded(main):
            return EXCLUDED
        return "forgotten" if self.forgotten(main) else None

    def excluded(self, main: Path) -> bool:
        if not self.rules:
            return False
        if self.rules.match_file(main):
            return True
        cwd = peek_field(main, "cwd")
        return bool(cwd) and self.rules.match(cwd)

    def forgotten(self, main: Path) -> bool:
        stones = self.tombstones()
        if not stones.sessions and not stones.projects:
            return False
        cwd = peek_field(main, "cwd") if stones.projects else ""
        return stones.forgets_file(main, main.stem, cwd)
