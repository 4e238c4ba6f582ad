"""What `samctl data forget` selects, and the tombstones that keep forgotten data from coming back.

A `Selector` combines any of `--source`, `--session`, `--project`, `--before` and `--match`; a
sample is selected when it meets every one given. `Tombstones` (`<data>/forget.json`) keep the
ids of forgotten samples, truncated sha256 digests of their message texts, and the session ids
and project patterns that were forgotten; `store_result` drops any new sample they name (reason
`forgotten`), so a transcript still on disk is not ingested again on the next poll, nor from the
archive. The file holds no text: a `--match` string is never written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest
from sam_brain.fsutil import write_text_atomic
from sam_brain.pipeline.exclude import PathRules, sample_paths
from sam_brain.protocols import Sample, stable_id

# Shorter texts ("yes", "Continue.") occur in many samples; their digests would forget too much.
MIN_HASH_CHARS = 32
# The gate report keeps the first 200 characters of a test prompt (deployment/evaluate.py).
PREFIX_CHARS = 200


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def parse_date(text: str) -> float:
    """`2026-05-01` or an ISO-8601 time (UTC unless it names a zone) as a Unix time."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as err:
        raise BadRequest(f"--before: {text!r} is not a date (YYYY-MM-DD or ISO-8601)") from err
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def sample_time(sample: Sample, first_seen: float) -> float:
    """When the sample's material was made: session start, commit, record time, else first seen."""
    meta = sample.meta
    for key in ("started", "committed_at", "created_at"):
        value = meta.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        if isinstance(value, str) and value:
            try:
                return parse_date(value.replace("Z", "+00:00"))
            except BadRequest:
                continue
    return first_seen


def line_digest(raw: bytes) -> str:
    """A transcript line's digest (lines are appended, never changed, so it is stable)."""
    return hashlib.sha256(raw.rstrip(b"\r\n")).hexdigest()[:32]


def row_digest(messages: list[Any]) -> str:
    """One digest of a whole conversation (catches samples whose every text is short)."""
    return digest(json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str))


# Record fields that are labels, not content (collectors/distillation.py `META_FIELDS` less
# `system`): a record without an id is keyed by the rest.
_RECORD_LABELS = ("id", "source", "teacher", "created_at", "tags")


def distill_record_key(obj: Any) -> str | None:
    """The source key the distillation collector gives a record line (its `_record_id`), so a
    processed record is recognised however short its texts are; None for other lines."""
    if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str) or "prompt" not in obj:
        return None
    if "id" in obj:
        return "distill:" + stable_id("distill", "id", str(obj["id"]))
    content = {k: v for k, v in obj.items() if k not in _RECORD_LABELS}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "distill:" + stable_id("distill", "content", canonical)


def session_of(sample: Sample) -> str:
    return str(sample.meta.get("session_id") or sample.group)


def contents(sample: Sample) -> Iterator[str]:
    """The sample's texts that identify it (not system prompts, which many samples share)."""
    for m in sample.messages:
        content = m.get("content")
        if m.get("role") != "system" and isinstance(content, str):
            yield content
    if sample.kind == "preference":
        yield from (sample.chosen, sample.rejected)


def long_contents(sample: Sample) -> Iterator[str]:
    return (c for c in contents(sample) if len(c) >= MIN_HASH_CHARS)


@dataclass(frozen=True)
class Selector:
    """The forget selectors; empty strings and None mean "not given"."""

    source: str = ""
    session: str = ""
    project: str = ""
    before: float | None = None
    match: str = ""

    @cached_property
    def _project(self) -> PathRules:
        return PathRules([self.project])

    # A rule for the future, and whole archive files, only where the selector meant a whole
    # session or project: `--project P --before D` must not keep P's later sessions out.
    @property
    def whole_session(self) -> str:
        return "" if self.before is not None or self.match else self.session

    @property
    def whole_project(self) -> str:
        narrowed = self.session or self.before is not None or self.match or self.source
        return "" if narrowed else self.project

    def given(self) -> list[str]:
        """Names of the selectors given (what the `forgotten` event records, never values)."""
        names = ("source", "session", "project", "before", "match")
        return [n for n in names if getattr(self, n) not in ("", None)]

    def selects(self, sample: Sample, first_seen: float) -> bool:
        if self.source and sample.source != self.source:
            return False
        if self.session and self.session not in (session_of(sample), sample.group):
            return False
        if self.project and not self._project.match_any(sample_paths(sample)):
            return False
        if self.before is not None and sample_time(sample, first_seen) >= self.before:
            return False
        return not self.match or self.match.casefold() in sample_blob(sample)


def sample_blob(sample: Sample) -> str:
    """Everything of a sample a `--match` can hit, case-folded."""
    return json.dumps(sample.to_dict(), ensure_ascii=False, default=str).casefold()


@dataclass
class Tombstones:
    """`forget.json`: what ingest must never store again."""

    path: Path
    ids: set[str] = field(default_factory=set)
    hashes: set[str] = field(default_factory=set)
    sessions: set[str] = field(default_factory=set)
    projects: list[str] = field(default_factory=list)
    lines: set[str] = field(default_factory=set)  # `line_digest`s of archived lines removed
    _rules: PathRules | None = None

    @classmethod
    def load(cls, path: Path) -> Tombstones:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as err:
            # Ingesting forgotten data again would be worse than stopping ingest.
            raise BadRequest(f"{path} is damaged ({err}); restore it or remove it") from err
        return cls(
            path,
            ids=set(doc.get("ids", [])),
            hashes=set(doc.get("hashes", [])),
            sessions=set(doc.get("sessions", [])),
            projects=list(doc.get("projects", [])),
            lines=set(doc.get("lines", [])),
        )

    def __bool__(self) -> bool:
        return bool(self.ids or self.hashes or self.sessions or self.projects)

    def drops(self, sample: Sample) -> bool:
        """Whether `sample` is (or contains) something forgotten."""
        if sample.id in self.ids or session_of(sample) in self.sessions:
            return True
        if self.projects:
            if self._rules is None:
                self._rules = PathRules(self.projects)
            if self._rules.match_any(sample_paths(sample)):
                return True
        return bool(self.hashes) and any(digest(c) in self.hashes for c in long_contents(sample))

    def forgets_file(self, path: Path, session_id: str, cwd: str) -> bool:
        """Whether a transcript belongs to a forgotten session or project (not to be read)."""
        if session_id in self.sessions or path.stem in self.sessions:
            return True
        if self.projects:
            if self._rules is None:
                self._rules = PathRules(self.projects)
            return self._rules.match_file(path) or bool(cwd and self._rules.match(cwd))
        return False

    def add(self, ids: Iterable[str], hashes: Iterable[str], sel: Selector) -> None:
        self.ids.update(ids)
        self.hashes.update(hashes)
        if sel.whole_session:
            self.sessions.add(sel.whole_session)
        if sel.whole_project and sel.whole_project not in self.projects:
            self.projects.append(sel.whole_project)
        self._rules = None

    def save(self) -> None:
        doc: dict[str, Any] = {
            "ids": sorted(self.ids),
            "hashes": sorted(self.hashes),
            "sessions": sorted(self.sessions),
            "projects": self.projects,
            "lines": sorted(self.lines),
        }
        write_text_atomic(self.path, json.dumps(doc, indent=1))


_CACHE: dict[Path, tuple[tuple[int, int, int], Tombstones]] = {}


def load_cached(path: Path) -> Tombstones:
    """The tombstones, re-read only when the file changed (ingest asks on every pass)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _CACHE.pop(path, None)
        return Tombstones(path)
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    hit = _CACHE.get(path)
    if hit is None or hit[0] != key:
        hit = _CACHE[path] = (key, Tombstones.load(path))
    return hit[1]


class Matcher:
    """Recognises forgotten text in files: whole texts, gate-report prefixes, the `--match`."""

    def __init__(
        self,
        forgotten: Iterable[str],
        kept: set[str],
        match: str = "",
        rows: Iterable[str] = (),
        keys: Iterable[str] = (),
    ) -> None:
        """`forgotten`: texts of forgotten samples; `kept`: digests of texts samples still
        in the pool use (never treated as forgotten); `rows`: `row_digest`s of their messages;
        `keys`: source keys of forgotten distillation records."""
        self.full: set[str] = set()
        self.prefix: set[str] = set()
        for text in forgotten:
            d = digest(text)
            if len(text) >= MIN_HASH_CHARS and d not in kept:
                self.full.add(d)
                if len(text) > PREFIX_CHARS:
                    self.prefix.add(digest(text[:PREFIX_CHARS]))
        self.match = match.casefold()
        self.rows = set(rows)
        self.keys = set(keys)  # source keys of forgotten distillation records

    def __bool__(self) -> bool:
        return bool(self.full or self.match or self.rows or self.keys)

    def row(self, obj: Any) -> bool:
        """Whether a dataset line (`{"messages": ...}` or a preference row) is forgotten."""
        if self.keys and distill_record_key(obj) in self.keys:
            return True
        if isinstance(obj, dict):
            messages = obj.get("messages", obj.get("prompt"))
            if isinstance(messages, list) and row_digest(messages) in self.rows:
                return True
        return self.any_string(obj)

    def string(self, s: str) -> bool:
        if self.match and self.match in s.casefold():
            return True
        if len(s) < MIN_HASH_CHARS:
            return False
        d = digest(s)
        return d in self.full or (len(s) == PREFIX_CHARS and d in self.prefix)

    def any_string(self, obj: Any) -> bool:
        """Whether any string inside a parsed JSON value is forgotten."""
        if isinstance(obj, str):
            return self.string(obj)
        if isinstance(obj, dict):
            return any(self.string(k) or self.any_string(v) for k, v in obj.items())
        if isinstance(obj, list):
            return any(self.any_string(v) for v in obj)
        return False

    def redact(self, obj: Any) -> tuple[Any, int]:
        """`obj` with forgotten strings replaced by "[forgotten]", and how many were."""
        if isinstance(obj, str):
            return ("[forgotten]", 1) if self.string(obj) else (obj, 0)
        if isinstance(obj, list):
            pairs = [self.redact(v) for v in obj]
            return [v for v, _ in pairs], sum(n for _, n in pairs)
        if isinstance(obj, dict):
            out, total = {}, 0
            for k, v in obj.items():
                if self.string(k):  # e.g. a report's per-file entry named after the text
                    total += 1
                    continue
                out[k], n = self.redact(v)
                total += n
            return out, total
        return obj, 0
