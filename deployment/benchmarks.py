"""Task benchmarks: scored answers to fixed prompts, per category, for any generate function.

Cases come from JSONL files, one per line: `{"category", "prompt", "keywords": [...],
"expected"?, "format": "text"|"json", "min_words"?, "id"?}`. Each answer gets the seed benchmark's
score (HALops `eval/benchmark.py`: keyword recall 70 % + length 30 %), plus exact match when an
`expected` answer is given and JSON validity for `"format": "json"` cases. The seed names the
length term but does not define it; here it is *length adequacy* = min(1, words / target), the
target being the case's `min_words`, else half the expected answer's words, else 20 words: an
answer is not rewarded for padding, only penalised for being too short to carry the content.
The generate function is an argument (`prompt -> answer`), so a stand-in and a real model run
through the same code; `model_generate` builds one from a `serving.ResidentModel`.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_brain.errors import BadRequest

if TYPE_CHECKING:
    from deployment.resident import ResidentModel

KEYWORD_WEIGHT = 0.7
LENGTH_WEIGHT = 0.3
DEFAULT_MIN_WORDS = 20
FORMATS = ("text", "json")
_FENCE = re.compile(r"^\s*```[\w-]*\s*\n(.*?)\n?```\s*$", re.DOTALL)


@dataclass(frozen=True)
class BenchmarkCase:
    """One prompt with what a good answer contains."""

    category: str
    prompt: str
    keywords: tuple[str, ...] = ()
    expected: Any = None  # text, or a JSON value for "json" cases
    format: str = "text"
    min_words: int | None = None
    id: str = ""


@dataclass
class CaseResult:
    """The score of one answer."""

    id: str
    category: str
    output: str
    keyword_recall: float
    length_adequacy: float
    score: float
    exact_match: bool | None  # None: the case has no expected answer
    json_valid: bool | None  # None: not a JSON case
    missing_keywords: list[str]
    error: str = ""


@dataclass
class CategoryStats:
    """Means over one category's cases; rates are None when no case measures them."""

    cases: int
    score: float
    keyword_recall: float
    length_adequacy: float
    exact_match_rate: float | None
    json_valid_rate: float | None


@dataclass
class BenchmarkReport:
    """All case results with the overall and per-category scores."""

    cases: int
    score: float
    categories: dict[str, CategoryStats]
    results: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_cases(path: Path) -> list[BenchmarkCase]:
    """Read a JSONL case file.

    Raises:
        BadRequest: A line is not JSON or misses/mistypes a field (named with its line number).
    """
    cases = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadRequest(f"{where}: not JSON ({err.msg})") from err
            cases.append(_case(row, where, default_id=f"{path.stem}-{lineno}"))
    return cases


def _case(row: Any, where: str, default_id: str) -> BenchmarkCase:
    if not isinstance(row, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    problems = []
    for key in ("category", "prompt"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            problems.append(f"'{key}' must be a non-empty string")
    keywords = row.get("keywords", [])
    if not isinstance(keywords, list) or not all(isinstance(k, str) and k for k in keywords):
        problems.append("'keywords' must be a list of non-empty strings")
    fmt = row.get("format", "text")
    if fmt not in FORMATS:
        problems.append(f"'format' must be one of {', '.join(FORMATS)}")
    min_words = row.get("min_words")
    if min_words is not None and (not isinstance(min_words, int) or min_words < 1):
        problems.append("'min_words' must be a positive integer")
    if problems:
        raise BadRequest(f"{where}: " + "; ".join(problems))
    expected = row.get("expected")
    if fmt == "json" and isinstance(expected, str):
        try:  # an expected JSON answer may be given as its text
            expected = json.loads(expected)
        except json.JSONDecodeError as err:
            raise BadRequest(f"{where}: 'expected' is not valid JSON ({err.msg})") from err
    return BenchmarkCase(
        category=row["category"],
        prompt=row["prompt"],
        keywords=tuple(keywords),
        expected=expected,
        format=fmt,
        min_words=min_words,
        id=str(row.get("id") or default_id),
    )


def keyword_recall(text: str, keywords: Sequence[str]) -> tuple[float, list[str]]:
    """Share of keywords found in `text` (case-insensitive substrings) and the missing ones."""
    if not keywords:
        return 1.0, []
    low = text.casefold()
    missing = [k for k in keywords if k.casefold() not in low]
    return 1.0 - len(missing) / len(keywords), missing


def length_target(case: BenchmarkCase) -> int:
    """Words an adequate answer has: `min_words`, else half the expected answer, else 20."""
    if case.min_words is not None:
        return case.min_words
    if case.expected is not None:
        text = case.expected if isinstance(case.expected, str) else json.dumps(case.expected)
        return max(1, math.ceil(len(text.split()) / 2))
    return DEFAULT_MIN_WORDS


def length_adequacy(text: str, case: BenchmarkCase) -> float:
    """min(1, words / target): full marks once the answer is long enough."""
    return min(1.0, len(text.split()) / length_target(case))


def parse_json_answer(text: str) -> tuple[bool, Any]:
    """`(valid, value)` of an answer that should be JSON; a Markdown code fence is allowed."""
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    try:
        return True, json.loads(body)
    except json.JSONDecodeError:
        return False, None


def _normalise(text: str) -> str:
    return " ".join(text.split()).casefold()


def score_case(case: BenchmarkCase, output: str, error: str = "") -> CaseResult:
    """Score one answer: 0.7 x keyword recall + 0.3 x length adequacy, plus the exact checks."""
    recall, missing = keyword_recall(output, case.keywords)
    adequacy = length_adequacy(output, case)
    json_valid: bool | None = None
    exact: bool | None = None
    if case.format == "json":
        json_valid, value = parse_json_answer(output)
        if case.expected is not None:
            exact = json_valid and value == case.expected
    elif case.expected is not None:
        exact = _normalise(output) == _normalise(str(case.expected))
    return CaseResult(
        id=case.id,
        category=case.category,
        output=output,
        keyword_recall=recall,
        length_adequacy=adequacy,
        score=KEYWORD_WEIGHT * recall + LENGTH_WEIGHT * adequacy,
        exact_match=exact,
        json_valid=json_valid,
        missing_keywords=missing,
        error=error,
    )


def run_benchmark(
    cases: Sequence[BenchmarkCase], generate: Callable[[str], str]
) -> BenchmarkReport:
    """Answer every case with `generate` and score it.

    A case whose generation raises scores as an empty answer with the error recorded, so one
    failure does not hide the other results.
    """
    start = time.perf_counter()
    results = []
    for case in cases:
        try:
            results.append(score_case(case, generate(case.prompt)))
        except Exception as err:  # any generator failure is this case's result, not a crash
            results.append(score_case(case, "", error=f"{type(err).__name__}: {err}"))
    by_category: dict[str, list[CaseResult]] = {}
    for r in results:
        by_category.setdefault(r.category, []).append(r)
    return BenchmarkReport(
        cases=len(results),
        score=_mean([r.score for r in results]),
        categories={name: _stats(rs) for name, rs in sorted(by_category.items())},
        results=results,
        seconds=time.perf_counter() - start,
    )


def _stats(results: list[CaseResult]) -> CategoryStats:
    exact = [r.exact_match for r in results if r.exact_match is not None]
    valid = [r.json_valid for r in results if r.json_valid is not None]
    return CategoryStats(
        cases=len(results),
        score=_mean([r.score for r in results]),
        keyword_recall=_mean([r.keyword_recall for r in results]),
        length_adequacy=_mean([r.length_adequacy for r in results]),
        exact_match_rate=_mean([float(x) for x in exact]) if exact else None,
        json_valid_rate=_mean([float(x) for x in valid]) if valid else None,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def model_generate(resident: ResidentModel, max_tokens: int = 256) -> Callable[[str], str]:
    """A `generate` for `run_benchmark`: greedy answers from the adapter in use on `resident`."""

    def generate(prompt: str) -> str:
        return resident.generate([{"role": "user", "content": prompt}], max_tokens).text

    return generate
