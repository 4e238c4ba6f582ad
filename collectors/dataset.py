"""Existing chat datasets (OpenAI chat JSONL, ShareGPT, Alpaca) as pool samples, all or nothing.

Two passes over the file, both streamed (collectors/dataset_read.py): `check_file` decides the
format, checks every row and hashes the content, keeping only counts and the first problems;
`batches` then reads it again and yields the samples in `CollectResult`s of `BATCH` rows for
the pipeline. A file with a malformed row imports nothing (`MalformedRows` names the rows),
unless the caller skips bad rows, which are then counted as `malformed:<code>`.

A sample's id is the file's SHA-256 and the row number, so importing the same file again
updates its samples in place (none inserted); one row is one group, so a conversation never
straddles two splits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collectors.dataset_formats import FORMATS, RowProblem, convert, detect
from collectors.dataset_read import Row, RowReader
from sam_brain.errors import BadRequest, Conflict
from sam_brain.protocols import CollectResult, Sample, stable_id

SOURCE = "dataset"
BATCH = 5000  # rows a batch: bounds memory on a huge file; each batch is one pool commit
DETECT_ROWS = 20  # the format must show within this many rows
MAX_LISTED = 20  # problems named in an error; the others are counted


class MalformedRows(BadRequest):
    """Rows of a dataset file are malformed; nothing was imported. Names the first rows."""

    def __init__(self, check: FileCheck) -> None:
        self.problems = list(check.problems)
        lines = [f"  {p}" for p in self.problems]
        more = check.bad_rows - len(self.problems)
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__(
            f"{check.path}: {check.bad_rows} of {check.rows} rows are malformed ({check.format});"
            " nothing was imported (fix them, or pass --skip-bad to import the others):\n"
            + "\n".join(lines)
        )


@dataclass
class FileCheck:
    """What the first pass found: the format, row counts, problems by code and the first few."""

    path: Path
    format: str = ""
    detected: bool = False
    container: str = ""
    digest: str = ""
    rows: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    stat: tuple[int, int] = (0, 0)

    @property
    def bad_rows(self) -> int:
        return sum(self.bad.values())

    def unchanged(self) -> bool:
        """The file is as the check read it (size and modification time)."""
        return _stat(self.path) == self.stat

    def summary(self) -> dict[str, Any]:
        return {
            "file": str(self.path),
            "format": self.format,
            "format_detected": self.detected,
            "rows": self.rows,
            "bad_rows": self.bad_rows,
            "bad": dict(self.bad),
            "problems": list(self.problems),
        }


def check_file(path: Path, fmt: str = "auto") -> FileCheck:
    """Read the whole file once: its format (`auto`: from the first rows), every row checked.

    Raises:
        NotFound: no such file. BadRequest: empty, not UTF-8, broken JSON array, no row in a
        known format (auto) or an unknown `fmt`.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise BadRequest(f"unknown dataset format {fmt!r}; choose auto, {', '.join(FORMATS)}")
    check = FileCheck(path=path, stat=_stat(path) if path.is_file() else (0, 0))
    check.format = "" if fmt == "auto" else fmt
    reader = RowReader(path)
    waiting: list[Row] = []  # rows read before the format is known
    for row in reader.rows():
        check.rows += 1
        if not check.format:
            waiting.append(row)
            found = None if row.error else detect(row.value)
            if found is None and len(waiting) < DETECT_ROWS:
                continue
            if found is None:
                raise BadRequest(_undetected(path, waiting))
            check.format, check.detected = found, True
            for early in waiting:
                _check_row(check, early, reader.container)
            waiting = []
            continue
        _check_row(check, row, reader.container)
    if check.rows == 0:
        raise BadRequest(f"{path} holds no rows (an empty JSON array or only blank lines)")
    if not check.format:
        raise BadRequest(_undetected(path, waiting))
    check.container, check.digest = reader.container, reader.digest
    return check


def _check_row(check: FileCheck, row: Row, container: str) -> None:
    try:
        _convert(check.format, row)
    except RowProblem as problem:
        check.bad[problem.code] += 1
        if len(check.problems) < MAX_LISTED:
            check.problems.append(f"{_where(row, container)}: {problem}")


def _convert(fmt: str, row: Row) -> tuple[list[dict[str, Any]], list[Any] | None]:
    if row.error:
        raise RowProblem("bad_json", row.error)
    try:
        return convert(fmt, row.value)
    except RowProblem as problem:
        other = detect(row.value)
        if other is not None and other != fmt:  # a stray row of another format: say so
            raise RowProblem(problem.code, f"{problem} (the row looks like {other})") from None
        raise


def _where(row: Row, container: str) -> str:
    return f"item {row.number} (line {row.line})" if container == "array" else f"line {row.line}"


def _undetected(path: Path, rows: list[Row]) -> str:
    first = next((r for r in rows if isinstance(r.value, dict)), None)
    keys = ", ".join(sorted(map(str, first.value))[:8]) if first is not None else "none"
    return (
        f"cannot tell the format of {path} from its first {len(rows)} rows (keys of the first"
        f" object: {keys}); expected 'messages' (openai), 'conversations' (sharegpt) or"
        " 'instruction' + 'output' (alpaca); pass --format"
    )


def batches(
    check: FileCheck, *, training: str | None = None, size: int = 0
) -> Iterator[CollectResult]:
    """The checked file's valid rows as samples, `size` rows a result; bad rows counted once.

    Raises:
        Conflict: the file changed since `check_file` read it.
    """
    size = size or BATCH
    reader = RowReader(check.path)
    current = CollectResult()
    current.skipped.update({f"malformed:{code}": n for code, n in check.bad.items()})
    sent = False
    for row in reader.rows():
        try:
            messages, tools = _convert(check.format, row)
        except RowProblem:
            continue  # counted by the check; the caller refused the file if it must not skip
        current.samples.append(_sample(check, row, messages, tools, training))
        if len(current.samples) >= size:
            yield current
            current, sent = CollectResult(), True
    if current.samples or not sent:
        yield current
    if reader.digest != check.digest:
        raise Conflict(f"{check.path} changed while it was imported; import it again")


def _sample(
    check: FileCheck,
    row: Row,
    messages: list[dict[str, Any]],
    tools: list[Any] | None,
    training: str | None,
) -> Sample:
    meta: dict[str, Any] = {
        "file": str(check.path),
        "row": row.number,
        "format": check.format,
        "file_sha256": check.digest,
    }
    if training is not None:
        meta["training"] = training
    if tools:
        meta["tools"] = tools
    return Sample(
        id=stable_id(SOURCE, check.digest, str(row.number)),
        source=SOURCE,
        source_key=f"{SOURCE}:{check.digest}",
        group=f"{SOURCE}:{check.digest}:{row.number}",
        messages=messages,
        strategy=SOURCE,
        tier="B",
        meta=meta,
    )


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
