"""Read a JSONL file that may still be being written, or was torn, into its JSON objects.

Claude Code appends to its transcripts line by line, so a file can end in a half-written line, hold
NUL bytes from an interrupted append, or carry two objects on one line after a torn write
(CC#52387). `decode_lines` and `read_records` never fail on such lines: they skip or salvage each
one and count it by reason, so the caller can report everything it left out.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

Record = dict[str, Any]
T = TypeVar("T")

try:  # orjson parses transcript lines 3-5x faster than json; both give the same objects
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    _orjson = None  # type: ignore[assignment]

MAX_LINE_BYTES = 10 * 2**20  # a transcript line this large is a pasted blob, not a conversation


def decode_lines(
    path: Path,
    skipped: Counter[str],
    fast: Callable[[memoryview], T],
    convert: Callable[[Record], T],
) -> Iterator[T]:
    """Decode each line of a JSONL file, the common lines fast and the odd ones carefully.

    Args:
        path: The file; it is read whole before the first line is decoded.
        skipped: Receives counts for `blank`, `nul_line`, `nul_bytes`, `undecodable`, `bad_json`,
            `salvaged_line`, `truncated_last_line` (no newline yet: the file may still be
            written), `line_too_long` and `not_object`.
        fast: Decodes a well-formed line; raises ValueError for any line it does not take.
        convert: Turns the JSON object of a line `fast` refused into what `fast` returns.

    Yields:
        Each usable line, decoded, in file order (one at a time, so each can be dropped as soon
        as it has been used).
    """
    data = path.read_bytes()
    # Lines are views into the file's bytes, not copies (`split` copied 30 MB in 20k pieces).
    view = memoryview(data)
    size = len(data)
    find = data.find  # the hot loop: bound once, not per line
    start = 0
    while start < size:
        end = find(b"\n", start)
        open_last = end < 0  # no newline yet: the line may still be being written
        if open_last:
            end = size
        # Nearly every line is a well-formed object; anything else, including what the fast
        # decoder is stricter about than json (NaN, lone surrogates, wrong field types), goes the
        # careful way below, which counts or salvages it.
        if end - start <= MAX_LINE_BYTES:
            try:
                item = fast(view[start:end])
            except ValueError:
                pass
            else:
                yield item
                start = end + 1
                continue
        rec = _decode_line(data[start:end], skipped, open_last)
        if rec is not None:
            yield convert(rec)
        start = end + 1


def read_records(path: Path, skipped: Counter[str]) -> list[Record]:
    """Read a JSONL transcript, returning its JSON objects and counting every unusable line.

    Args:
        path: The transcript file.
        skipped: Receives counts by reason, as `decode_lines` describes.
    """
    return list(decode_lines(path, skipped, _object, _same))


def _object(raw: memoryview) -> Record:
    if _orjson is None:  # pragma: no cover - without orjson every line goes the careful way
        raise ValueError("no fast decoder")
    obj = _orjson.loads(raw)
    if type(obj) is not dict:
        raise ValueError("not an object")  # the careful path counts it
    return obj


def _same(rec: Record) -> Record:
    return rec


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
