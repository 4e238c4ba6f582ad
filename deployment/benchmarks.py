"""Task benchmarks: scored answers to fixed prompts, per category and per source.

Cases come from JSONL files (`deployment.cases`). Each answer gets a score in [0, 1] by the
case's `scoring`:

- `exact` (clitron's exact match): 1 when the answer equals `expected`, else 0;
- `json` (clitron's JSON validity + schema compliance): 0.5 for valid JSON + 0.5 when it
  conforms (to the case's JSON Schema and/or `expected` value; with neither, validity is all);
- `keywords` (HALops' `eval/benchmark.py`): 0.7 x keyword recall + 0.3 x length adequacy. The
  seed names the length term but does not define it; here it is min(1, words / target), the
  target being the case's `min_words`, else half the expected answer's words, else 20 words: an
  answer is not rewarded for padding, only penalised for being too short to carry the content.

The generate function is an argument (`(messages, max_tokens) -> answer`), so a stand-in and a
real model run through the same code; `model_generate` builds one from the gate's resident model
(greedy, prompts rendered as training renders them: `sam_brain.render.prompt_ids`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from deployment.cases import BenchmarkCase, load_case_files, load_cases, parse_case
from deployment.resident import Completion, Halted
from sam_brain.protocols import Message

__all__ = ["BenchmarkCase", "load_case_files", "load_cases", "parse_case", "run_benchmark"]

KEYWORD_WEIGHT = 0.7
LENGTH_WEIGHT = 0.3
DEFAULT_MIN_WORDS = 20
DEFAULT_MAX_TOKENS = 128
_OPEN_FENCE = re.compile(r"\A```[\w-]*[ \t]*\n")
Generate = Callable[[list[Message], int], str]


@dataclass
class CaseResult:
    """The score of one answer and what it is made of (None: not measured by this scoring)."""

    id: str
    category: str
    source: str
    scoring: str
    prompt: str
    output: str
    score: float
    exact_match: bool | None = None
    json_valid: bool | None = None
    conforms: bool | None = None  # to the schema and/or expected value
    schema_error: str = ""
    keyword_recall: float | None = None
    length_adequacy: float | None = None
    missing_keywords: list[str] = field(default_factory=list)
    error: str = ""

    def why(self) -> str:
        """What was wrong, in a few words ("" for a full score)."""
        if self.error:
            return self.error
        if self.scoring == "keywords" and self.missing_keywords:
            return "missing " + ", ".join(map(repr, self.missing_keywords))
        if self.scoring == "json" and not self.json_valid:
            return "not JSON"
        if self.scoring == "json" and not self.conforms:
            return self.schema_error or "JSON differs from the expected value"
        if self.scoring == "exact" and not self.exact_match:
            return "not the expected answer"
        return "too short" if self.score < 1 else ""


@dataclass
class GroupStats:
    """Means over one category's or source's cases; rates are None when no case measures them."""

    cases: int
    score: float
    exact_match_rate: float | None
    json_valid_rate: float | None
    keyword_recall: float | None


@dataclass
class BenchmarkReport:
    """All case results with the overall, per-category and per-source scores."""

    cases: int
    score: float
    categories: dict[str, GroupStats]
    sources: dict[str, GroupStats]
    results: list[CaseResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scores(self) -> list[float]:
        return [r.score for r in self.results]


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


def unfence(text: str) -> str:
    """The answer without a code fence opening it or closing it (small models often write only
    one of the two); text before an opening fence is kept, so prose + JSON is not JSON."""
    body = text.strip()
    opened = _OPEN_FENCE.match(body)
    body = body[opened.end() :] if opened else body
    return body.removesuffix("```").strip()


def parse_json_answer(text: str) -> tuple[bool, Any]:
    """`(valid, value)` of an answer that should be JSON; a Markdown code fence is allowed."""
    try:
        return True, json.loads(unfence(text))
    except json.JSONDecodeError:
        return False, None


def schema_error(value: Any, schema: dict[str, Any]) -> str:
    """The first way `value` breaks `schema` ("" when it conforms), with where in the value."""
    from jsonschema import validators

    validator = validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if not errors:
        return ""
    err = errors[0]
    where = "/".join(str(p) for p in err.absolute_path) or "the value"
    return f"schema: {where}: {err.message}"[:200]


def _normalise(text: str, ignore_case: bool) -> str:
    flat = " ".join(unfence(text).split())
    return flat.casefold() if ignore_case else flat


def score_case(case: BenchmarkCase, output: str, error: str = "") -> CaseResult:
    """Score one answer by the case's scoring rule."""
    result = CaseResult(
        id=case.id,
        category=case.category,
        source=case.source,
        scoring=case.scoring,
        prompt=case.prompt[:200],
        output=output,
        score=0.0,
        error=error,
    )
    if case.scoring == "exact":
        same = _normalise(output, case.ignore_case) == _normalise(case.expected, case.ignore_case)
        result.exact_match = same
        result.score = float(same)
    elif case.scoring == "json":
        valid, value = parse_json_answer(output)
        conforms = valid
        if valid and case.schema is not None:
            result.schema_error = schema_error(value, case.schema)
            conforms = not result.schema_error
        if valid and case.expected is not None:
            result.exact_match = value == case.expected
            conforms = conforms and result.exact_match
        result.json_valid, result.conforms = valid, conforms
        has_target = case.schema is not None or case.expected is not None
        result.score = 0.5 * valid + 0.5 * conforms if has_target else float(valid)
    else:
        recall, missing = keyword_recall(output, case.keywords)
        adequacy = length_adequacy(output, case)
        result.keyword_recall, result.length_adequacy = recall, adequacy
        result.missing_keywords = missing
        result.score = KEYWORD_WEIGHT * recall + LENGTH_WEIGHT * adequacy
    return result


def run_benchmark(
    cases: Sequence[BenchmarkCase],
    generate: Generate,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> BenchmarkReport:
    """Answer every case with `generate` and score it.

    A case whose generation raises scores as an empty answer with the error recorded, so one
    failure does not hide the other results; a halted model (daemon shutdown) stops the run.
    """
    start = time.perf_counter()
    results = []
    for case in cases:
        budget = case.max_tokens or max_tokens
        try:
            results.append(score_case(case, generate(list(case.messages), budget)))
        except Halted:  # the daemon is stopping: no verdict, rather than every case failed
            raise
        except Exception as err:  # any generator failure is this case's result, not a crash
            results.append(score_case(case, "", error=f"{type(err).__name__}: {err}"))
    return BenchmarkReport(
        cases=len(results),
        score=_mean([r.score for r in results]),
        categories=group_stats(results, "category"),
        sources=group_stats(results, "source"),
        results=results,
        seconds=time.perf_counter() - start,
    )


def group_stats(results: Sequence[CaseResult], key: str) -> dict[str, GroupStats]:
    """`GroupStats` per value of `key` ("category" or "source"), sorted by name."""
    groups: dict[str, list[CaseResult]] = {}
    for r in results:
        groups.setdefault(getattr(r, key), []).append(r)
    return {name: _stats(rs) for name, rs in sorted(groups.items())}


def _stats(results: list[CaseResult]) -> GroupStats:
    exact = [float(r.exact_match) for r in results if r.exact_match is not None]
    valid = [float(r.json_valid) for r in results if r.json_valid is not None]
    recall = [r.keyword_recall for r in results if r.keyword_recall is not None]
    return GroupStats(
        cases=len(results),
        score=_mean([r.score for r in results]),
        exact_match_rate=_mean(exact) if exact else None,
        json_valid_rate=_mean(valid) if valid else None,
        keyword_recall=_mean(recall) if recall else None,
    )


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class Answerer(Protocol):
    """What the benchmark needs of a model (the gate's `GateModel` has it)."""

    def generate(self, messages: list[Message], max_tokens: int) -> Completion: ...


def model_generate(model: Answerer) -> Generate:
    """A `generate` for `run_benchmark`: greedy answers from the adapter in use on `model`."""

    def generate(messages: list[Message], max_tokens: int) -> str:
        return model.generate(messages, max_tokens).text

    return generate
