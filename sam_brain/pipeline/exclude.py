"""`sources.exclude`: glob patterns naming projects, repositories and paths kept out of the pool.

A pattern with a `/` (after `~` expansion) is matched against a path and each of its parents, so
`~/work/acme` keeps out everything under that folder and `*/clients/*` any path with a `clients`
folder in it; a pattern without `/` is matched against each component of the path (`acme-*`).
Collectors check the paths they are about to read (a session's project folder and working
directory, a repository, a doc or inbox file) and count what they leave out as skipped
`excluded`; `store_result` checks every sample's recorded paths again as a backstop.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import Any

from sam_brain.protocols import CollectResult, Cursors, Sample

EXCLUDED = "excluded"
CURSOR_PREFIX = "excluded:"
# Everything Claude Code turns into '-' when it names a project folder after its working directory.
_PROJECT_CHAR = re.compile(r"[^A-Za-z0-9*?\[\]!]")


def project_dir_name(path_pattern: str) -> str:
    """The `~/.claude/projects/<name>` folder name Claude Code gives a working directory."""
    return _PROJECT_CHAR.sub("-", path_pattern)


class PathRules:
    """Compiled exclude patterns; `match(path)` says whether a path is excluded."""

    def __init__(self, patterns: Iterable[str]) -> None:
        full: list[str] = []
        names: list[str] = []
        for raw in patterns:
            pat = os.path.expanduser(raw.strip())
            if not pat:
                continue
            if "/" in pat:
                full.append(pat.rstrip("/") or "/")
            else:
                names.append(pat)
        self.full, self.names = full, names
        self.project_dirs = [project_dir_name(p) for p in full]

    def __bool__(self) -> bool:
        return bool(self.full or self.names)

    def match(self, path: str | os.PathLike[str]) -> bool:
        """True when `path`, one of its parents, or one of its components is excluded."""
        if not self or not str(path):
            return False
        p = PurePosixPath(os.fspath(path))
        if self.names and any(fnmatchcase(part, n) for part in p.parts for n in self.names):
            return True
        chain = [str(p), *(str(a) for a in p.parents)]
        return any(fnmatchcase(c, f) for c in chain for f in self.full)

    def match_project_dir(self, name: str) -> bool:
        """True when a Claude Code project folder name is that of an excluded directory."""
        return any(fnmatchcase(name, d) for d in self.project_dirs)

    def match_file(self, path: os.PathLike[str]) -> bool:
        """`match`, or the file sits in the Claude Code project folder of an excluded path
        (at any depth: subagent files live in `<project>/<session>/subagents/`)."""
        if self.match(path):
            return True
        return bool(self.project_dirs) and any(
            self.match_project_dir(part) for part in PurePosixPath(os.fspath(path)).parts
        )

    def match_any(self, paths: Iterable[str]) -> bool:
        return any(self.match_file(PurePosixPath(p)) for p in paths if p)


def sample_paths(sample: Sample) -> list[str]:
    """The paths a sample records about where it came from: its source key (a transcript, a
    repository, a file: never scrubbed) and the paths in its meta (cwd, repo, file: these had
    home directories replaced by the scrubber once stored)."""
    key = sample.source_key
    for prefix in ("git:", "docs:"):
        if key.startswith(prefix):
            key = key[len(prefix) :]
            key = key.rsplit(":", 1)[0] if prefix == "git:" else key
    meta = sample.meta
    out = [key, *(str(meta.get(k) or "") for k in ("path", "cwd", "repo", "file"))]
    return [p for p in out if p.startswith("/")]


def skip_excluded(
    cursors: Cursors, result: CollectResult, key: str, ident: Any, reason: str = EXCLUDED
) -> None:
    """Count an excluded unit as skipped `excluded` once per state of it, then `unchanged`.

    The marker lives under its own cursor key, so removing the pattern later lets the unit in
    on the next poll (its ordinary cursor was never advanced).
    """
    value = json.dumps(ident, sort_keys=True, default=str)
    if cursors.get_cursor(CURSOR_PREFIX + key) == value:
        result.skipped["unchanged"] += 1
        return
    result.skipped[reason] += 1
    result.cursors[CURSOR_PREFIX + key] = value


def file_ident(path: os.PathLike[str] | str) -> dict[str, float]:
    """What changes when a file does (no read of its content)."""
    try:
        st = os.stat(path)
    except OSError:
        return {}
    return {"ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime}
