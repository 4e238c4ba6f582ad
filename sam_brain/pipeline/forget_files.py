"""Forgetting outside the pool: the transcript archive and every file under the home with samples.

Archived transcripts (`archive/**/*.jsonl.gz`) of a forgotten session are deleted (main and
subagent files alike: each names its `sessionId`); with `--match`, every archived transcript
is rewritten without the lines that contain the text. Files holding samples (run datasets
`runs/*/data/*.jsonl`, the gate's `pool-test.jsonl`, distillation records, exports written
under the home) lose their forgotten lines; JSON reports have forgotten strings replaced.
Every rewrite goes through a temporary file and a rename, so a crash leaves old or new, whole.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sam_brain.fsutil import atomic_file
from sam_brain.pipeline.exclude import PathRules
from sam_brain.pipeline.forget_rules import Matcher, line_digest

# Under the home: what is not sample text, or is handled elsewhere (pool, archive).
SKIP_DIRS = {"pool", "archive", "versions"}
SKIP_NAMES = ("state.db", "dedup.idx", "forget.json", "daemon.lock", "write.lock")


@dataclass
class FileReport:
    counts: Counter[str] = field(default_factory=Counter)
    runs: set[str] = field(default_factory=set)  # runs whose dataset held forgotten rows


def archive_head(path: Path) -> tuple[str, str]:
    """`sessionId` and `cwd` from the first lines of an archived transcript ("" when absent)."""
    session, cwd = "", ""
    try:
        with gzip.open(path, "rb") as fh:
            for _, raw in zip(range(20), fh, strict=False):
                try:
                    rec = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(rec, dict):
                    session = session or str(rec.get("sessionId") or "")
                    cwd = cwd or str(rec.get("cwd") or "")
                if session and cwd:
                    break
    except (OSError, EOFError):
        pass
    return session, cwd


def forget_archive(
    archive: Path,
    sessions: set[str],
    project: str,
    matcher: Matcher,
    *,
    dry_run: bool,
    removed_lines: set[str] | None = None,
) -> Counter[str]:
    """Delete archived transcripts of `sessions` (or of `project`); strip `--match` lines.

    The `line_digest` of every line stripped goes into `removed_lines`, so the collector can
    leave those lines out when it archives the same transcript again."""
    counts: Counter[str] = Counter()
    if not archive.is_dir() or not (sessions or project or matcher.match):
        return counts
    rules = PathRules([project]) if project else None
    for gz in sorted(archive.rglob("*.jsonl.gz")):
        session, cwd = archive_head(gz)
        rel = gz.relative_to(archive)
        whole = session in sessions
        if rules is not None and not whole:
            whole = rules.match(cwd) or any(rules.match_project_dir(p) for p in rel.parts)
            whole = whole or bool(rules.names and rules.match("/" + rel.as_posix()))
        if whole:
            counts["archive_files_deleted"] += 1
            if not dry_run:
                gz.unlink(missing_ok=True)
        elif matcher.match:
            removed = _rewrite_gz(gz, matcher, dry_run, removed_lines)
            if removed:
                counts["archive_files_rewritten"] += 1
                counts["archive_lines_removed"] += removed
    return counts


def _rewrite_gz(path: Path, matcher: Matcher, dry_run: bool, removed_lines: set[str] | None) -> int:
    with gzip.open(path, "rb") as fh:
        lines = fh.readlines()
    keep: list[bytes] = []
    for raw in lines:
        if not _line_forgotten(raw, matcher):
            keep.append(raw)
        elif removed_lines is not None:
            removed_lines.add(line_digest(raw))
    removed = len(lines) - len(keep)
    if removed and not dry_run:
        with atomic_file(path) as tmp, gzip.open(tmp, "wb") as out:
            out.writelines(keep)
    return removed


def _line_forgotten(raw: bytes, matcher: Matcher) -> bool:
    text = raw.decode("utf-8", errors="replace")
    if matcher.match and matcher.match in text.casefold():
        return True  # also catches the text inside a line that is not valid JSON
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return matcher.row(obj)


def home_files(data: Path) -> Iterator[Path]:
    """Files under the home that may hold sample text (see SKIP_DIRS and SKIP_NAMES)."""
    for dirpath, dirnames, filenames in os.walk(data):
        here = Path(dirpath)
        if here == data:
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            if not name.startswith(SKIP_NAMES) and name.endswith((".jsonl", ".json")):
                yield here / name


def forget_in_files(data: Path, matcher: Matcher, *, dry_run: bool) -> FileReport:
    """Remove forgotten rows from JSONL files and strings from JSON files under `data`."""
    report = FileReport()
    if not matcher:
        return report
    runs = data / "runs"
    for path in home_files(data):
        try:
            removed = (
                _rewrite_jsonl(path, matcher, dry_run)
                if path.suffix == ".jsonl"
                else _rewrite_json(path, matcher, dry_run)
            )
        except (OSError, UnicodeDecodeError):
            report.counts["files_unreadable"] += 1
            continue
        if not removed:
            continue
        report.counts["files_rewritten"] += 1
        report.counts["rows_removed"] += removed
        if path.is_relative_to(runs) and path.parent.name == "data":
            report.runs.add(path.relative_to(runs).parts[0])
    return report


def _rewrite_jsonl(path: Path, matcher: Matcher, dry_run: bool) -> int:
    with open(path, "rb") as fh:
        lines = fh.readlines()
    keep = [raw for raw in lines if not _line_forgotten(raw, matcher)]
    removed = len(lines) - len(keep)
    if removed and not dry_run:
        with atomic_file(path) as tmp, open(tmp, "wb") as out:
            out.writelines(keep)
    return removed


def _rewrite_json(path: Path, matcher: Matcher, dry_run: bool) -> int:
    text = path.read_text(encoding="utf-8")
    try:
        doc = json.loads(text)
    except ValueError:
        return 0
    clean, removed = matcher.redact(doc)
    if removed and not dry_run:
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(clean, indent=2, ensure_ascii=False), encoding="utf-8")
    return removed
