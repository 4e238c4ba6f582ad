"""Docs-grounded keyword cases (HALops' docs-grounded benchmark) made from a training's docs.

The docs are cut exactly as the docs collector cuts them (`collectors.docs`: heading sections,
same questions), so a case asks what the docs training teaches. Without a teacher a case's
keywords are the section's key terms: code spans, bold terms and identifiers first, then its
most distinctive words (frequent in the section, rare across sections); words of the question
itself never count, since echoing the question is no knowledge. With a `Teacher` (passed in: the
caller builds it from `[teacher]`), the teacher writes the question and picks the key terms;
only terms that occur in the section are kept, so every case stays grounded in the docs. What
was skipped is counted with the reason.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collectors.docs import DocsCollector
from deployment.benchmarks import parse_json_answer
from deployment.cases import BenchmarkCase
from sam_brain.errors import BadRequest, TeacherError
from sam_brain.fsutil import write_text_atomic
from sam_brain.protocols import Sample, Teacher, TeacherRequest, stable_id

MIN_KEYWORDS = 2
_CODE = re.compile(r"`([^`\n]{2,40})`")
_BOLD = re.compile(r"\*\*([^*\n]{2,40})\*\*")
_IDENT = re.compile(r"\b[\w-]*(?:[_./][\w-]+|[a-z][A-Z])[\w./-]*\b|\b[A-Z][A-Z0-9]{1,}\b")
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]{4,}")
_STOP = frozenset(  # words of five letters or more that say nothing about a section
    {"about", "above", "after", "again", "against", "among", "because", "before", "being",
     "below", "between", "could", "doing", "during", "every", "first", "further", "having",
     "itself", "might", "other", "their", "there", "these", "those", "through", "under", "until",
     "where", "which", "while", "would", "should", "shall", "cannot", "across", "along",
     "already", "although", "always", "another", "around", "based", "whose", "within", "without",
     "using", "given", "gives", "makes", "yours", "documentation", "section", "example",
     "examples", "following", "follows"}
)  # fmt: skip
TEACHER_SYSTEM = (
    "You write test questions grounded in a project's documentation. Given one section, reply"
    ' with JSON only: {"question": "...", "keywords": ["...", ...]}. The question is one a user'
    " of the project might ask that this section answers, understandable without seeing it. The"
    " keywords are 2 to 5 short terms, copied exactly from the section (commands, names, values),"
    " that a correct answer must contain."
)


@dataclass
class DocCases:
    """Cases made from docs and what was skipped, by reason."""

    cases: list[BenchmarkCase] = field(default_factory=list)
    sections: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)  # the first few teacher errors, verbatim


class _NoCursors:
    def get_cursor(self, key: str) -> str | None:
        return None


def doc_sections(paths: Sequence[Path], exclude: Sequence[str] = ()) -> list[Sample]:
    """The docs collector's question/section samples of every Markdown file under `paths`.

    Raises:
        BadRequest: A path does not exist.
    """
    missing = [str(p) for p in paths if not Path(p).expanduser().exists()]
    if missing:
        raise BadRequest(f"no such docs file or folder: {', '.join(missing)}")
    result = DocsCollector(list(paths), exclude=exclude).collect(_NoCursors())
    # Skill "How do I ...?" samples have no single section to ground keywords in.
    return [s for s in result.samples if s.meta.get("heading_path") is not None]


def key_terms(text: str, question: str, df: Counter[str], docs: int, limit: int) -> list[str]:
    """Up to `limit` terms of `text` a good answer contains, most telling first."""
    asked = question.casefold()
    picked: list[str] = []

    def add(term: str) -> None:
        term = term.strip().strip(".,:;")
        low = term.casefold()
        if len(term) < 2 or low in asked or any(low in p.casefold() for p in picked):
            return
        picked[:] = [p for p in picked if p.casefold() not in low]  # keep the longer one
        picked.append(term)

    for pattern in (_CODE, _BOLD, _IDENT):
        for match in pattern.finditer(text):
            if len(picked) < limit:
                add(match.group(1) if pattern.groups else match.group(0))
    counts = Counter(w.casefold() for w in _WORD.findall(text))
    ranked = sorted(
        (w for w in counts if w not in _STOP),
        key=lambda w: (-counts[w] * math.log((1 + docs) / (1 + df[w])), w),
    )
    for word in ranked:
        if len(picked) >= limit:
            break
        add(word)
    return picked[:limit]


def cases_from_docs(
    paths: Sequence[Path], *, max_cases: int = 50, keywords: int = 4, exclude: Sequence[str] = ()
) -> DocCases:
    """Keyword cases from the docs' headings and key terms, without a teacher."""
    sections = doc_sections(paths, exclude)
    out = DocCases(sections=len(sections))
    df: Counter[str] = Counter()
    for s in sections:
        df.update({w.casefold() for w in _WORD.findall(_answer(s))})
    for s in sections:
        if len(out.cases) >= max_cases:
            out.skipped["over max_cases"] += 1
            continue
        terms = key_terms(_answer(s), _question(s), df, len(sections), keywords)
        if len(terms) < MIN_KEYWORDS:
            out.skipped["too few key terms"] += 1
            continue
        out.cases.append(_case(s, _question(s), terms, "docs"))
    return out


def cases_from_docs_with_teacher(
    teacher: Teacher, paths: Sequence[Path], *, max_cases: int = 50, exclude: Sequence[str] = ()
) -> DocCases:
    """Keyword cases whose questions and key terms the teacher writes, one per section."""
    sections = doc_sections(paths, exclude)
    out = DocCases(sections=len(sections))
    for s in sections:
        if len(out.cases) >= max_cases:
            out.skipped["over max_cases"] += 1
            continue
        meta = s.meta
        prompt = (
            f"Project: {meta.get('project')}\nDocument: {meta.get('title')}\n"
            f"Section: {' > '.join(meta.get('heading_path') or []) or 'introduction'}\n\n"
            f"{_answer(s)}"
        )
        request = TeacherRequest(
            messages=[{"role": "user", "content": prompt}], system=TEACHER_SYSTEM, key=s.id
        )
        try:
            reply = teacher.ask(request)
        except TeacherError as err:
            out.skipped["teacher error"] += 1
            if len(out.errors) < 3:
                out.errors.append(str(err))
            continue
        valid, value = parse_json_answer(reply.text.strip())
        if not valid or not isinstance(value, dict) or not isinstance(value.get("question"), str):
            out.skipped["teacher reply not a question object"] += 1
            continue
        section = _answer(s).casefold()
        terms = [
            k.strip()
            for k in value.get("keywords") or []
            if isinstance(k, str) and k.strip() and k.strip().casefold() in section
        ]
        terms = list(dict.fromkeys(terms))
        if len(terms) < MIN_KEYWORDS:
            out.skipped["teacher keywords not in the section"] += 1
            continue
        out.cases.append(_case(s, value["question"].strip(), terms, "docs-teacher"))
    return out


def write_cases(cases: Sequence[BenchmarkCase], path: Path) -> None:
    """Write cases as a JSONL case file (atomically: a reader never sees half a file)."""
    text = "".join(json.dumps(c.to_row(), ensure_ascii=False) + "\n" for c in cases)
    write_text_atomic(path, text)


def _question(s: Sample) -> str:
    return str(s.messages[0]["content"])


def _answer(s: Sample) -> str:
    return str(s.messages[-1]["content"])


def _case(s: Sample, question: str, terms: list[str], source: str) -> BenchmarkCase:
    words = len(_answer(s).split())
    return BenchmarkCase(
        category=str(s.meta.get("title") or "docs"),
        messages=({"role": "user", "content": question},),
        scoring="keywords",
        keywords=tuple(terms),
        min_words=max(5, min(40, words // 4)),
        id=f"{source}-{stable_id(source, s.id, question)[:12]}",
        source=source,
    )
