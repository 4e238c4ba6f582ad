"""Credential scrubbing: every sample is scrubbed before it reaches the pool (logs and API output too).

Detection uses detect-secrets' (Yelp) plugin classes directly, each behind a cheap trigger regex so a
plugin only runs on the lines that could match it; our own rules cover what detect-secrets misses
(whole PEM blocks, URL and curl credentials, auth headers, `.env`-style assignments, vendor prefixes
such as `sk-`, `AIza`, `hf_`). The rule tables live in `sam_brain.pipeline.scrub_rules`; this module runs
them and merges the hits. Each hit becomes `[REDACTED:<kind>]`, a value found once is redacted
everywhere in the same text, home directories become a placeholder user (`/home/user`,
`/Users/user`, `C:\\Users\\user`: paths stay absolute, so tool arguments stay valid) and e-mail
addresses are redacted (optional). Existing markers are never matched again, so scrubbing twice changes nothing more.
docs/scrubbing.md lists every rule, where it comes from and the false-positive filters.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import re
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam_brain.pipeline.scrub_context import (
    assigned_spans,
    block_spans,
    keyword_spans,
    lone_spans,
)
from sam_brain.pipeline.scrub_engine import engine_spans
from sam_brain.pipeline.scrub_rules import (
    ASSIGN_RE,
    EMAIL_DOMAIN_RE,
    EMAIL_KEEP_RE,
    EMAIL_LOCAL,
    FLAG_RE,
    FLAG_VALUE_RE,
    GENERIC,
    KEY_CHARS,
    KEY_SEP_RE,
    PII,
    PLUGINS,
    RULES,
    STRUCT,
    VENDOR,
    Span,
    key_is_credential,
    plausible_value,
)
from sam_brain.protocols import Sample

__all__ = ["GENERIC", "MARKER_RE", "PII", "STRUCT", "VENDOR", "Scrubber", "Span"]

MARKER_RE = re.compile(r"\[REDACTED:[a-z0-9_]+\]")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "_-+/.~")
_TAIL_CHARS = _TOKEN_CHARS | {"="}  # base64 padding ends a token; `=` before one is `key=`

# A home directory under /home or /Users; the placeholder user itself and /Users/Shared are kept.
_HOME_RE = re.compile(r"/(?<![\w.~-]/)(home|Users)/(?!(?:Shared|user)(?![\w.-]))[\w-][\w.-]*")
_WIN_HOME_RE = re.compile(
    r"\b([A-Za-z]:(?:\\{1,2})Users(?:\\{1,2}))(?!(?:user|Public|Default|All Users)\b)[\w.-]+"
)
HOME_PLACEHOLDER = "/home/user"
_MIN_REPEAT = 8  # a redacted value this long is also redacted wherever else it occurs
_KEEP_KEYS = frozenset({"role", "id", "tool_call_id", "type"})  # message fields never scrubbed


class Scrubber:
    """Redacts credentials (and optionally e-mail addresses); home paths get a placeholder user.

    Args:
        redact_emails: replace e-mail addresses with `[REDACTED:email]`.
        home: the home directory to replace with `/home/user` (`/Users/user` when it is under
            /Users; default: `Path.home()`), also in its `~/.claude/projects` form (`-home-x-...`);
            `/home/<name>`, `/Users/<name>` and `C:\\Users\\<name>` are replaced for every user.
        engine: also run the maintained engine (`scrub_engine`); off only to measure our rules.
    """

    def __init__(
        self, redact_emails: bool = True, home: str | None = None, engine: bool = True
    ) -> None:
        self.redact_emails = redact_emails
        self.engine = engine
        home = (home if home is not None else str(Path.home())).rstrip("/")
        placeholder = "/Users/user" if home.startswith("/Users/") else HOME_PLACEHOLDER
        self._home = home if len(home) > 1 and home != placeholder else None
        # The home itself, or its dashed form as a path part (Claude Code's project directories).
        self._dashed = re.sub(r"[/.]", "-", home)
        self._home_re = re.compile(
            f"({re.escape(home)})(?![\\w.-])|(?<=/){re.escape(self._dashed)}(?![\\w.])"
        )
        self._home_sub = (placeholder, placeholder.replace("/", "-"))

    def scrub_text(self, text: str) -> tuple[str, Counter[str]]:
        """Redact one text (a message, a log line, an API response).

        Returns:
            The redacted text and the number of redactions of each kind (`home_path` included).
        """
        out, counts, _ = self._scrub(text, {})
        return out, counts

    def scrub_sample(self, sample: Sample) -> tuple[Sample, Counter[str]]:
        """Scrub messages (content and tool calls), chosen/rejected and string values in meta.

        A value redacted in one field is also redacted wherever else it occurs in the sample.

        Returns:
            A new sample and the counts of redactions by kind; the input is not modified.
        """
        counts: Counter[str] = Counter()
        found: dict[str, str] = {}  # redacted value -> kind, across all fields

        def scrub(value: str) -> str:
            out, n, values = self._scrub(value, {})
            counts.update(n)
            found.update(values)
            return out

        def again(value: str) -> str:
            out, n, _ = self._scrub(value, found, detect=False)
            counts.update(n)
            return out

        new = _map_strings(sample, scrub)
        return (_map_strings(new, again) if found else new), counts

    def _scrub(
        self, text: str, known: dict[str, str], detect: bool = True
    ) -> tuple[str, Counter[str], dict[str, str]]:
        counts: Counter[str] = Counter()
        spans = self._find(text) if detect and len(text) >= 7 else []  # 1.1.1.1 is the shortest
        extra = [s for value, kind in known.items() for s in _occurrences(text, value, kind)]
        spans += _outside_markers(text, extra)
        values = {text[a:b]: kind for a, b, _, kind in spans if len(text[a:b]) >= _MIN_REPEAT}
        if spans:
            text = _apply(text, spans, counts)
        if self._home is not None and (self._home in text or self._dashed in text):
            text, n = self._home_re.subn(lambda m: self._home_sub[m.group(1) is None], text)
            counts["home_path"] += n
        if "/home/" in text or "/Users/" in text:
            text, n = _HOME_RE.subn(r"/\1/user", text)
            counts["home_path"] += n
        if "Users\\" in text:
            text, n = _WIN_HOME_RE.subn(r"\1user", text)
            counts["home_path"] += n
        return text, +counts, values

    def _find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        # The lowercased copy must keep every offset (a few non-ASCII letters lower to two).
        lower = text.lower()
        if len(lower) != len(text):
            lower = text.translate(_ASCII_LOWER)
        for rule in RULES:
            if rule.trigger in lower:
                for m in rule.pattern.finditer(text):
                    value = m.group(rule.group)
                    if value and (rule.check is None or rule.check(value)):
                        spans.append((*m.span(rule.group), rule.priority, rule.kind))
        _plugin_spans(text, lower, spans)
        _assignment_spans(text, lower, spans)
        # Context rules and the engine only add what ours missed: our kinds and counts stay.
        more = block_spans(text, lower) + keyword_spans(text, lower) + assigned_spans(text)
        more += lone_spans(text) + (engine_spans(text) if self.engine else [])
        spans += _uncovered(more, spans)
        if self.redact_emails and "@" in text:
            spans += _emails(text)
        # An e-mail or IP inside a credential is left to the credential rule (no merged spans).
        strong = [s for s in spans if s[2] < PII]
        spans = strong + _not_overlapping([s for s in spans if s[2] >= PII], strong)
        return _everywhere(text, _outside_markers(text, spans))


def _uncovered(new: list[Span], spans: list[Span]) -> list[Span]:
    """The new spans not inside one of `spans` (a span inside another redacts nothing more)."""
    if not spans or not new:
        return new
    ordered = sorted(spans)
    starts = [s[0] for s in ordered]
    ends = list(itertools.accumulate((s[1] for s in ordered), max))
    kept = []
    for span in new:
        i = bisect.bisect_right(starts, span[0])  # spans that start at or before this one
        if i == 0 or ends[i - 1] < span[1]:
            kept.append(span)
    return kept


def _plugin_spans(text: str, lower: str, spans: list[Span]) -> None:
    starts: list[int] | None = None
    for entry in PLUGINS:
        if entry.gate and not any(word in lower for word in entry.gate):
            continue
        hits = [m.start() for m in entry.trigger.finditer(lower if entry.gate else text)]
        if not hits:
            continue
        if starts is None:
            starts = [0, *(m.end() for m in re.finditer("\n", text))]
        for i in sorted({bisect.bisect_right(starts, h) - 1 for h in hits}):
            lo = starts[i]
            line = text[lo : starts[i + 1] - 1] if i + 1 < len(starts) else text[lo:]
            limit = getattr(entry.plugin, "entropy_limit", None)
            for value in set(entry.plugin.analyze_string(line)) - {""}:
                if limit is not None and entry.plugin.calculate_shannon_entropy(value) <= limit:
                    continue
                for a, b in _locate(line, value):
                    if entry.check is None or entry.check(line[a:b], line):
                        spans.append((lo + a, lo + b, entry.priority, entry.kind))


def _locate(line: str, value: str) -> list[tuple[int, int]]:
    """Each occurrence of `value` in `line`, widened to the whole token it sits in."""
    out = []
    pos = line.find(value)
    while pos >= 0:
        a, b = pos, pos + len(value)
        while a > 0 and line[a - 1] in _TOKEN_CHARS and value[0] in _TOKEN_CHARS:
            a -= 1
        while b < len(line) and line[b] in _TAIL_CHARS and value[-1] in _TAIL_CHARS:
            b += 1
        out.append((a, b))
        pos = line.find(value, pos + len(value))
    return out


def _assignment_spans(text: str, lower: str, spans: list[Span]) -> None:
    seen: set[int] = set()
    for finder, value_re in ((KEY_SEP_RE, ASSIGN_RE), (FLAG_RE, FLAG_VALUE_RE)):
        for m in finder.finditer(lower):
            start, end = m.span()
            if end in seen:
                continue
            seen.add(end)
            while start > 0 and text[start - 1] in KEY_CHARS:
                start -= 1
            if text.startswith("[REDACTED:", start - 10):
                continue
            if not key_is_credential(text[start:end].lstrip("-")):
                continue
            v = value_re.match(text, end)
            if v is None:
                continue
            group = next(g for g, val in v.groupdict().items() if val is not None)
            if plausible_value(v.group(group)):
                spans.append((*v.span(group), GENERIC, "secret_assignment"))


def _emails(text: str) -> list[Span]:
    out: list[Span] = []
    for m in EMAIL_DOMAIN_RE.finditer(text):
        start = m.start()
        while start > 0 and text[start - 1] in EMAIL_LOCAL:
            start -= 1
        while start < m.start() and not text[start].isalnum():
            start += 1
        if start < m.start() and not EMAIL_KEEP_RE.search(text[start : m.end()]):
            out.append((start, m.end(), PII, "email"))
    return out


def _not_overlapping(spans: list[Span], blockers: list[Span]) -> list[Span]:
    """The spans that overlap no blocker (sorted starts + running max of ends: n log n)."""
    if not blockers:
        return spans
    ordered = sorted(blockers)
    starts = [b[0] for b in ordered]
    ends = list(itertools.accumulate((b[1] for b in ordered), max))  # furthest end so far
    kept = []
    for span in spans:
        i = bisect.bisect_left(starts, span[1])  # blockers that start before the span ends
        if i == 0 or ends[i - 1] <= span[0]:
            kept.append(span)
    return kept


def _outside_markers(text: str, spans: list[Span]) -> list[Span]:
    """Drops spans that touch an existing `[REDACTED:...]` marker (keeps scrubbing idempotent)."""
    if not spans or "[REDACTED:" not in text:
        return spans
    marks = [(m.start(), m.end(), 0, "") for m in MARKER_RE.finditer(text)]
    return _not_overlapping(spans, marks)


def _occurrences(text: str, value: str, kind: str) -> list[Span]:
    out: list[Span] = []
    pos = text.find(value)
    while pos >= 0:
        out.append((pos, pos + len(value), GENERIC, kind))
        pos = text.find(value, pos + len(value))
    return out


def _everywhere(text: str, spans: list[Span]) -> list[Span]:
    """Adds every other occurrence of each redacted value (8+ chars, one line) in the text."""
    extra: list[Span] = []
    for value, (_, _, _, kind) in {text[s[0] : s[1]]: s for s in spans}.items():
        if len(value) >= _MIN_REPEAT and "\n" not in value:
            extra += _occurrences(text, value, kind)
    return spans + _outside_markers(text, extra)


def _apply(text: str, spans: list[Span], counts: Counter[str]) -> str:
    """Merges overlapping spans (the lowest priority names the kind) and replaces them."""
    spans.sort()
    parts: list[str] = []
    last = 0
    start0, end0, prio0, kind0 = spans[0]
    cur_start, cur_end, cur_key = start0, end0, (prio0, start0, kind0)
    for start, end, prio, kind in [*spans[1:], (len(text) + 1, 0, 0, "")]:
        if start < cur_end:
            cur_end = max(cur_end, end)
            cur_key = min(cur_key, (prio, start, kind))
            continue
        parts += [text[last:cur_start], f"[REDACTED:{cur_key[2]}]"]
        counts[cur_key[2]] += 1
        last = cur_end
        cur_start, cur_end, cur_key = start, end, (prio, start, kind)
    parts.append(text[last:])
    return "".join(parts)


def _map_strings(sample: Sample, fn: Callable[[str], str]) -> Sample:
    return dataclasses.replace(
        sample,
        messages=[_scrub_tree(m, fn, _KEEP_KEYS) for m in sample.messages],
        chosen=fn(sample.chosen),
        rejected=fn(sample.rejected),
        meta=_scrub_tree(sample.meta, fn, frozenset()),
    )


def _scrub_tree(obj: Any, scrub: Callable[[str], str], keep: frozenset[str], key: str = "") -> Any:
    """Scrubs every string in nested dicts/lists; JSON-encoded `arguments` are scrubbed decoded."""
    if isinstance(obj, str):
        if key == "arguments" and obj[:1] in ("{", "["):
            try:
                decoded = json.loads(obj)
            except ValueError:
                return scrub(obj)
            cleaned = _scrub_tree(decoded, scrub, frozenset())
            return obj if cleaned == decoded else json.dumps(cleaned, ensure_ascii=False)
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: v if k in keep else _scrub_tree(v, scrub, keep, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_tree(v, scrub, keep) for v in obj]
    return obj
