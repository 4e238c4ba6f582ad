"""Read a JSONL file that may still be being written, or was torn, into its JSON objects.

Claude Code appends to its transcripts line by line, so a file can end in a half-written line, hold
NUL bytes from an interrupted append, or carry two objects on one line after a torn write
(CC#52387). `read_records` never fails on such lines: it skips or salvages each one and counts it
by reason, so the caller can report everything it left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

Record = dict[str, Any]

try:  # orjson parses transcript lines 3-5x faster than json; both give the same objects
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    _orjson = None  # type: ignore[assignment]


def read_records(path: Path, skipped: Counter[str]) -> list[Record]:
    """Read a JSONL transcript, returning its JSON objects and counting every unusable line.

    Args:
        path: The transcript file.
        skipped: Receives counts for `blank`, `nul_line`, `undecodable`, `bad_json`,
            `truncated_last_line` (no newline yet: the file may still be written), `not_object`.
    """
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    records = []
    last = len(lines) - 1 if not data.endswith(b"\n") else -1
    fast = _orjson.loads if _orjson is not None else None
    for i, raw in enumerate(lines):
        # Fast path: a well-formed object line (nearly all of them). Anything else, including
        # what orjson is stricter about than json (NaN, huge ints, lone surrogates), goes the
        # careful way below, which counts or salvages it.
        if fast is not None and len(raw) <= MAX_LINE_BYTES:
            try:
                obj = fast(raw)
            except ValueError:
                pass
            else:
                if type(obj) is dict:
                    records.append(obj)
                    continue
        rec = _decode_line(raw, skipped, i == last)
        if rec is not None:
            records.append(rec)
    return records


MAX_LINE_BYTES = 10 * 2**20  # a transcript line this large is a pasted blob, not a conversation


def _decode_line(raw: bytes, skipped: Counter[str], open_last: bool) -> Record | None:
    if len(raw) > MAX_LINE_BYTES:
        skipped["line_too_long"] += 1
        return None
    line = raw.strip()
    if b"\x00" in line:
        # Raw NULs are never valid JSON (strings escape them); they come from interrupted appends.
        line = line.replace(b"\x00", b"").strip()
        skipped["nul_bytes" if line else "nul_line"] += 1
        if not line:
            return None
    if not line:
        skipped["blank"] += 1
        return None
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        skipped["undecodable"] += 1
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        if open_last:
            skipped["truncated_last_line"] += 1
            return None
        obj = _salvage(text)
        if obj is None:
            skipped["bad_json"] += 1
            return None
        skipped["salvaged_line"] += 1
    if not isinstance(obj, dict):
        skipped["not_object"] += 1
        return None
    return obj


def _salvage(text: str) -> Record | None:
    """Recover the second object of two written onto one line by a torn append (CC#52387)."""
    decoder = json.JSONDecoder()
    for m in list(re.finditer(r'\{"', text))[1:20]:
        try:
            obj, end = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and not text[end:].strip():
            return obj
    return None
