"""Stream the rows of a dataset file: JSON lines, or one JSON array, never the whole file at once.

A file whose first character is `[` is a JSON array (its items are the rows, numbered from 1);
anything else is JSON lines (the rows are the non-blank lines, numbered by line). Both are read
in chunks of `CHUNK` bytes, so a multi-GB file costs the memory of its largest row, and both
feed every byte to a SHA-256 whose digest names the file's content in sample ids.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest, NotFound

CHUNK = 1 << 20
MAX_ROW_CHARS = 16 << 20  # one row larger than this is a broken file, not a conversation
BOM = "\ufeff"


@dataclass
class Row:
    """One row: its number (1-based), the line it starts on, and its value or why it has none."""

    number: int
    line: int
    value: Any = None
    error: str = ""  # "bad JSON: ..." when the line does not parse


class RowReader:
    """Iterate a file's rows once (`rows()`); `digest` and `container` are final after that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.container = ""  # "jsonl" or "array", known after the first chunk
        self._hash = hashlib.sha256()
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._offset = 0  # bytes read so far, for the error message of a non-UTF-8 file

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def rows(self) -> Iterator[Row]:
        if not self.path.is_file():
            what = "is not a file" if self.path.exists() else "does not exist"
            raise NotFound(f"dataset file {self.path} {what}")
        try:
            with self.path.open("rb") as f:
                chunks = iter(lambda: self._text(f.read(CHUNK)), None)
                yield from self._rows(chunks)
        except OSError as err:
            raise BadRequest(f"cannot read {self.path}: {err.strerror or err}") from err

    def _text(self, data: bytes) -> str | None:
        """Decode one chunk (None at the end); a byte that is not UTF-8 ends the import."""
        final = not data
        self._hash.update(data)
        try:
            text = self._decoder.decode(data, final=final)
        except UnicodeDecodeError as err:
            at = self._offset + err.start
            raise BadRequest(
                f"{self.path} is not UTF-8 text (byte {at}); convert it, e.g. with iconv"
            ) from None
        self._offset += len(data)
        return None if final and not text else text

    def _rows(self, chunks: Iterator[str | None]) -> Iterator[Row]:
        buf = ""
        for text in chunks:
            buf += text or ""
            if buf.startswith(BOM):
                buf = buf[1:]
            if buf.strip():
                break
        else:
            raise BadRequest(f"{self.path} is empty")
        if buf.lstrip().startswith("["):
            self.container = "array"
            yield from _array_rows(self.path, buf, chunks)
        else:
            self.container = "jsonl"
            yield from _line_rows(buf, chunks)


def _line_rows(buf: str, chunks: Iterator[str | None]) -> Iterator[Row]:
    number = 0
    pending: list[str] = []  # the current line's pieces, joined once its newline arrives
    size = 0
    text: str | None = buf
    while text is not None:
        *lines, tail = text.split("\n")
        for piece in lines:
            line = "".join([*pending, piece]) if pending else piece
            pending, size = [], 0
            number += 1
            if line.strip():
                yield _parse_line(number, line)
        pending.append(tail)
        size += len(tail)
        if size > MAX_ROW_CHARS:
            raise BadRequest(f"line {number + 1} is longer than {MAX_ROW_CHARS} characters")
        text = next(chunks, None)
    last = "".join(pending)
    if last.strip():
        yield _parse_line(number + 1, last)


def _parse_line(number: int, line: str) -> Row:
    try:
        return Row(number, number, json.loads(line))
    except json.JSONDecodeError as err:
        return Row(number, number, error=f"bad JSON: {err.msg} at column {err.colno}")
    except RecursionError:
        return Row(number, number, error="bad JSON: nested too deeply")


_decode = json.JSONDecoder().raw_decode


def _array_rows(path: Path, buf: str, chunks: Iterator[str | None]) -> Iterator[Row]:
    """The items of a top-level JSON array, decoded one at a time as the text arrives.

    A syntax error inside an array cannot be skipped (where the next item starts is unknown),
    so it ends the import with its item and line number, whatever `--skip-bad` says.
    """
    pos = buf.index("[") + 1
    line = 1 + buf.count("\n", 0, pos)
    number, done, expect_item = 0, False, True

    def more() -> bool:
        nonlocal buf, pos, done
        text = None if done else next(chunks, None)
        if text is None:
            done = True
            return False
        buf = buf[pos:] + text
        pos = 0
        return True

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n":
            line += buf[pos] == "\n"
            pos += 1
        if pos >= len(buf):
            if more():
                continue
            raise BadRequest(f"{path}: the JSON array is not closed (after item {number})")
        char = buf[pos]
        if char == "]" and (number == 0 or not expect_item):
            break
        if not expect_item:
            if char != ",":
                raise BadRequest(f"{path}: bad JSON after item {number} (line {line})")
            pos, expect_item = pos + 1, True
            continue
        try:
            value, end = _decode(buf, pos)
        except json.JSONDecodeError as err:
            if len(buf) - pos < MAX_ROW_CHARS and more():
                continue  # maybe only cut off at the chunk's end: read on and decode again
            at = line + buf.count("\n", pos, err.pos)
            raise BadRequest(
                f"{path}: bad JSON in item {number + 1} (line {at}): {err.msg}"
            ) from None
        except RecursionError:
            raise BadRequest(
                f"{path}: item {number + 1} (line {line}) is nested too deeply"
            ) from None
        if end == len(buf) and more():
            continue  # a number at the buffer's end may go on in the next chunk
        number += 1
        yield Row(number, line, value)
        line += buf.count("\n", pos, end)
        pos, expect_item = end, False
    pos += 1
    while True:
        if buf[pos:].strip():
            raise BadRequest(f"{path}: text after the closing ']' of the JSON array")
        if not more():
            return
