"""`samctl ingest sessions --from-archive`: extract samples again from the transcript archive.

The sessions collector keeps a gzip copy of every transcript it reads under `<data>/archive/`,
at its path relative to the sessions directory it was found in (Claude Code deletes transcripts
after 30 days). Re-extraction unpacks the archive into a private temporary folder under the
home (mtimes kept, so quiet periods are as before), runs the same collector over it, and maps
every source key back to the transcript's original path: the samples get the ids and keys a
live extraction gives, so they replace rather than duplicate what the pool holds. Exclusions and
forget tombstones apply as on any ingest; the live collector's cursors are not touched.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from sam_brain import registry
from sam_brain.errors import NotFound
from sam_brain.fsutil import atomic_file
from sam_brain.pipeline.forget_rules import line_digest
from sam_brain.protocols import CollectResult

if TYPE_CHECKING:
    from sam_brain.home import Home
    from sam_brain.pipeline.ingest import IngestReport


def write_archive_copy(src: Path, dest: Path, skip_lines: set[str]) -> None:
    """Gzip `src` to `dest` atomically, leaving out lines whose `line_digest` is in
    `skip_lines` (lines `samctl data forget --match` removed from the archive)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(dest) as tmp, src.open("rb") as fh, gzip.open(tmp, "wb") as out:
        if not skip_lines:
            shutil.copyfileobj(fh, out)
            return
        for raw in fh:
            if line_digest(raw) not in skip_lines:
                out.write(raw)


class _NoCursors:
    """Every transcript counts as new: re-extraction ignores what was read before."""

    def get_cursor(self, key: str) -> str | None:
        return None


def unpack(archive: Path, dest: Path) -> int:
    """Decompress every `*.jsonl.gz` of `archive` under `dest` at the same relative path."""
    n = 0
    for gz in sorted(archive.rglob("*.jsonl.gz")):
        out = dest / gz.relative_to(archive).with_suffix("")
        out.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(gz, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst)
        st = gz.stat()
        os.utime(out, (st.st_atime, st.st_mtime))
        n += 1
    return n


def original_path(rel: Path, roots: Sequence[Path]) -> Path:
    """Where an archived transcript was read from: under the sessions directory holding it
    now, else under the first configured one (the transcript itself may be gone)."""
    for root in roots:
        if (root / rel).exists():
            return root / rel
    return (roots[0] if roots else Path("/")) / rel


def _remap(result: CollectResult, tmp: Path, roots: Sequence[Path]) -> None:
    def back(key: str) -> str:
        p = Path(key)
        return str(original_path(p.relative_to(tmp), roots)) if p.is_relative_to(tmp) else key

    for sample in result.samples:
        sample.source_key = back(sample.source_key)
        if isinstance(sample.meta.get("path"), str):
            sample.meta["path"] = back(sample.meta["path"])
    result.replace_keys = {back(k) for k in result.replace_keys}
    result.coverage = {back(k): v for k, v in result.coverage.items()}
    result.cursors = {}  # identities of temporary files mean nothing to the live collector


def ingest_from_archive(home: Home, *, quiet_minutes: float) -> IngestReport:
    """Re-extract every archived transcript into the pool; returns the ingest report."""
    from sam_brain.pipeline.ingest import store_result
    from sam_brain.pipeline.tokens import message_counter, window_tokens

    archive = home.archive_dir
    if not archive.is_dir() or not any(archive.rglob("*.jsonl.gz")):
        raise NotFound(f"no archived transcripts under {archive}")
    config = home.config
    roots = [Path(d).expanduser().absolute() for d in config.sources.sessions_dirs]
    cls = registry.load(registry.COLLECTORS, "sessions", "collector")
    # Under the home, not the shared /tmp: these are the user's private transcripts.
    with tempfile.TemporaryDirectory(prefix=".from-archive-", dir=home.data) as raw:
        tmp = Path(raw)
        unpack(archive, tmp)
        collector = cls(
            dirs=[tmp],
            quiet_minutes=quiet_minutes,
            max_tokens=window_tokens(config),
            count=message_counter(config),
            archive_dir=None,
            exclude=config.sources.exclude,
            forget_file=home.data / "forget.json",
        )
        result = collector.collect(_NoCursors(), None)
        _remap(result, tmp, roots)
        return store_result(home, "sessions", result)
