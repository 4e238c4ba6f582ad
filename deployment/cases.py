"""Task-benchmark case files: JSONL, one case per line, checked line by line.

A case is a prompt (`"prompt": "..."`, or `"messages": [...]` for a conversation the model
continues) with what a good answer is and how to score it:

- `"scoring": "exact"`: the answer must equal `expected` (whitespace collapsed; a Markdown code
  fence opening or closing the answer is ignored; `"ignore_case": true` ignores case);
- `"scoring": "json"`: the answer must be JSON (a code fence is allowed) and conform: to `schema`
  (a JSON Schema) when given, and equal `expected` when given;
- `"scoring": "keywords"`: the seed benchmark's rule (HALops): 70 % keyword recall
  (case-insensitive substrings) + 30 % length adequacy (see `deployment.benchmarks`).

When `scoring` is left out it follows from the fields: keywords, else schema (json), else
expected (exact). Optional: `id` (default `<file stem>-<line>`), `source` (default the file's
stem, so built-in and docs-grounded cases are reported apart), `min_words`, `max_tokens`.
Every problem is a `BadRequest` naming the file and line, so a broken case file is fixed in one go.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest
from sam_brain.protocols import Message

SCORINGS = ("exact", "json", "keywords")
ROLES = ("system", "user", "assistant")
KNOWN_FIELDS = frozenset(
    {"id", "category", "source", "prompt", "messages", "scoring", "expected", "keywords",
     "schema", "min_words", "max_tokens", "ignore_case"}
)  # fmt: skip


@dataclass(frozen=True)
class BenchmarkCase:
    """One prompt with what a good answer is and how it is scored."""

    category: str
    messages: tuple[Message, ...]
    scoring: str = "keywords"
    keywords: tuple[str, ...] = ()
    expected: Any = None  # text for "exact"; a JSON value for "json"
    schema: dict[str, Any] | None = None
    min_words: int | None = None
    max_tokens: int | None = None
    ignore_case: bool = False
    id: str = ""
    source: str = ""

    @property
    def prompt(self) -> str:
        """The last user message (what tables and reasons show)."""
        users = [m for m in self.messages if m.get("role") == "user"]
        return str((users or list(self.messages))[-1].get("content") or "")

    def to_row(self) -> dict[str, Any]:
        """The case as a JSONL row that `parse_case` reads back unchanged."""
        row: dict[str, Any] = {"id": self.id, "category": self.category, "source": self.source}
        msgs = list(self.messages)
        if len(msgs) == 1 and msgs[0].get("role") == "user":
            row["prompt"] = msgs[0]["content"]
        else:
            row["messages"] = msgs
        row["scoring"] = self.scoring
        for key in ("keywords", "expected", "schema", "min_words", "max_tokens"):
            value = getattr(self, key)
            if value not in (None, ()):
                row[key] = list(value) if key == "keywords" else value
        if self.ignore_case:
            row["ignore_case"] = True
        return row


def load_cases(path: Path) -> list[BenchmarkCase]:
    """Read a JSONL case file (blank lines are skipped).

    Raises:
        BadRequest: The file cannot be read, has no case, or a line is not a valid case (every
            bad line is named with its number, up to ten).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadRequest(f"case file {path}: cannot read it ({err})") from err
    cases, problems, ids = [], [], set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not JSON ({err.msg})")
            continue
        try:
            case = parse_case(row, where, default_id=f"{path.stem}-{lineno}", source=path.stem)
        except BadRequest as err:
            problems.append(str(err))
            continue
        if case.id in ids:
            problems.append(f"{where}: duplicate id {case.id!r}")
        ids.add(case.id)
        cases.append(case)
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise BadRequest("; ".join(problems[:10]) + more)
    if not cases:
        raise BadRequest(f"case file {path}: no cases")
    return cases


def load_case_files(paths: Iterable[Path]) -> list[BenchmarkCase]:
    """All cases of several files, in order; ids must be unique across them."""
    cases: list[BenchmarkCase] = []
    seen: dict[str, Path] = {}
    for path in paths:
        for case in load_cases(path):
            if case.id in seen:
                raise BadRequest(f"{path}: case id {case.id!r} is also in {seen[case.id]}")
            seen[case.id] = path
            cases.append(case)
    return cases


def parse_case(row: Any, where: str, default_id: str, source: str = "") -> BenchmarkCase:
    """One case from a parsed JSON row.

    Raises:
        BadRequest: Every problem of the row, in one line starting with `where`.
    """
    if not isinstance(row, dict):
        raise BadRequest(f"{where}: expected a JSON object, got {type(row).__name__}")
    problems: list[str] = []
    unknown = sorted(set(row) - KNOWN_FIELDS)
    if unknown:
        problems.append(f"unknown field(s) {', '.join(map(repr, unknown))}")
    if not _text(row.get("category")):
        problems.append("'category' must be a non-empty string")
    messages = _messages(row, problems)
    keywords = row.get("keywords", [])
    if not isinstance(keywords, list) or not all(_text(k) for k in keywords):
        problems.append("'keywords' must be a list of non-empty strings")
        keywords = []
    schema = row.get("schema")
    if schema is not None:
        problems += _schema_problems(schema)
    scoring = row.get("scoring") or _implied_scoring(row)
    if scoring not in SCORINGS:
        problems.append(
            f"'scoring' must be one of {', '.join(SCORINGS)}"
            + ("" if "scoring" in row else " (or give keywords, a schema or an expected answer)")
        )
    expected = row.get("expected")
    if scoring == "keywords" and not keywords:
        problems.append("keyword scoring needs a non-empty 'keywords' list")
    if scoring == "exact" and not isinstance(expected, str):
        problems.append("exact scoring needs 'expected' as a string")
    if scoring == "json" and isinstance(expected, str):
        try:  # an expected JSON value may be given as its text
            expected = json.loads(expected)
        except json.JSONDecodeError as err:
            problems.append(f"'expected' is not valid JSON ({err.msg})")
    for key in ("min_words", "max_tokens"):
        value = row.get(key)
        if value is not None and (type(value) is not int or value < 1):
            problems.append(f"'{key}' must be a positive integer")
    for key in ("id", "source"):
        if key in row and not _text(row[key]):
            problems.append(f"'{key}' must be a non-empty string")
    if problems:
        raise BadRequest(f"{where}: " + "; ".join(problems))
    return BenchmarkCase(
        category=row["category"].strip(),
        messages=tuple(messages),
        scoring=scoring,
        keywords=tuple(keywords),
        expected=expected,
        schema=schema,
        min_words=row.get("min_words"),
        max_tokens=row.get("max_tokens"),
        ignore_case=bool(row.get("ignore_case", False)),
        id=str(row.get("id") or default_id),
        source=str(row.get("source") or source or "cases"),
    )


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _implied_scoring(row: dict[str, Any]) -> str:
    if row.get("keywords"):
        return "keywords"
    if row.get("schema") is not None:
        return "json"
    return "exact" if "expected" in row else ""


def _messages(row: dict[str, Any], problems: list[str]) -> list[Message]:
    if ("prompt" in row) == ("messages" in row):
        problems.append("give exactly one of 'prompt' (text) or 'messages' (a conversation)")
        return []
    if "prompt" in row:
        if not _text(row["prompt"]):
            problems.append("'prompt' must be a non-empty string")
            return []
        return [{"role": "user", "content": row["prompt"]}]
    msgs = row["messages"]
    ok = (
        isinstance(msgs, list)
        and bool(msgs)
        and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in msgs
        )
    )
    if not ok:
        problems.append(
            "'messages' must be a non-empty list of {role: system|user|assistant, content: text}"
        )
        return []
    if msgs[-1]["role"] == "assistant":
        problems.append("'messages' must end before the answer (last role not assistant)")
        return []
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _schema_problems(schema: Any) -> list[str]:
    if not isinstance(schema, dict):
        return ["'schema' must be a JSON Schema object"]
    from jsonschema import SchemaError, validators

    try:
        validators.validator_for(schema).check_schema(schema)
    except SchemaError as err:
        return [f"'schema' is not a valid JSON Schema ({err.message})"]
    return []
