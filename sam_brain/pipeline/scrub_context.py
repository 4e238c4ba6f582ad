"""Rules that need context rather than a vendor's format (issue 13: formats nobody wrote a rule for).

- `keyword_spans`: a random token just after a credential word (`aws_secret_access_key  wJal...`
  in a table, `my token is ...`), or the token the word sits in (`AIK_SECRET_...`);
- `assigned_spans`: a random token assigned to any name (`miro => "..."`), stricter;
- `lone_spans`: a vendor-style token on its own (`ramp_sec_<random>`);
- `block_spans`: OpenVPN static keys and inline key sections.

`looks_random` decides: 16+ characters, letters and digits that alternate often or mixed case
near half and half, high entropy, and none of the public ids of transcripts and code (tool-use
ids, agent ids, UUIDs, git SHAs, digests, dotted and CamelCase names, embedded files).
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections import Counter

from detect_secrets.filters import heuristic

from sam_brain.pipeline.scrub_rules import GENERIC, STRUCT, Span, is_public_id

_KEYWORD = re.compile(r"secret|token|tkn|passw|pwd|passphrase|credential|auth(?!or)|key|bearer")
_WORD_CHARS = frozenset(string.ascii_letters + string.digits + "_-")  # a token around a keyword
# `name = <random token>` whatever the name, unless the name says what the value is (an id, a digest).
# Separator first (a character-set prefix `re` scans fast); the name before it is checked after.
_ASSIGN = re.compile(r"(?:=>|:{1,3}=|\?=|\|\||=|:|>|,)[ \t\"'`=]{0,5}(?=[\w+/~-]{20})")
_NAME_BEFORE = re.compile(r"([A-Za-z_][\w.-]{0,40})[ \t\"'`]{0,3}$")
# A vendor-style token on its own (`ramp_sec_<random>`): a short word prefix, then a random body of
# letters of both cases and digits; no '/' or '+', so base64 payloads and public keys do not match.
_LONE = re.compile(
    r"(?<![\w+/=.~-])[a-z]{2,10}[_-](?:[a-z]{2,10}[_-])?([A-Za-z0-9_-]{24,})(?![\w+/=~-])"
)
_PUBLIC_NAMES = re.compile(
    r"(?i)(?:^|[_.-])(?:id|uuid|sha\d*|hash|digest|checksum|etag|integrity|commit|rev|ref|version"
    r"|path|file|url|href|src|name|branch|tag|image|data|content|signature|text|title|h\d|base64|slug)$"
    r"|Ids?$"
)
# A token starts after a non-token character ('=' allowed: `key=...`) and may end in padding.
_TOKEN = re.compile(r"(?<![\w+/~.-])[\w+/~-][\w+/~.-]{14,}[\w+/~-]={0,2}(?![\w+/~-]|\.[\w+/~-])")
# Prefixes whose vendor rule checks the whole structure (Slack's digit groups, GitHub's length):
# a value that rule rejected is a fake, and the context rules leave it alone too.
_DEFER = re.compile(r"(?:xox[a-z]|xapp|gh[pousr]|github_pat|pplx|hf)[-_]|AIza")
_HEX_OR_SEP = frozenset(string.hexdigits + "-_")  # trace and request ids: not a credential here
_CAMEL_WORD = re.compile(r"[A-Z][a-z]{5,}")  # two of these are rare in a random token (~2%)
_WINDOW = 48  # characters after the keyword where the token may start
_HASH_HEX = frozenset({32, 40, 64, 128})  # md5, sha1 (git), sha256, sha512 in hex

_BLOCKS = re.compile(
    r"-{5}BEGIN OpenVPN Static key V\d-{5}(?s:.{0,8192}?)-{5}END OpenVPN Static key V\d-{5}"
    # Inline OpenVPN sections hold PEM or base64; a plist's `<key>Name</key>` holds neither.
    r"|<(key|tls-auth|tls-crypt|tls-crypt-v2|secret|pkcs12)>(?=\s*(?:-{5}BEGIN|[A-Za-z0-9+/=]{40}))"
    r"(?s:.{0,16384}?)</\1>"
)


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def looks_random(value: str, hex_ok: bool = False) -> bool:
    """A credential-shaped token: long, mixed, high-entropy, not an identifier or a public id.

    Single-case hex of a digest's length (md5, sha256, sha512) counts only when `hex_ok` (after
    a word such as `secret` or `token`, not `key`); a git SHA's length never does.
    """
    if len(value) < 16 or is_public_id(value) or _DEFER.match(value) or value[0] in "~.":
        return False
    if value[0] == "/" and value.count("/") > 1:  # a path (a base64 token may start with one '/')
        return False
    if heuristic.is_potential_uuid(value) or heuristic.is_sequential_string(value):
        return False
    if "." in value.strip(
        "."
    ):  # dotted names (`gguf.TokenType.USER_DEFINED`) unless a part is random
        return any(looks_random(part, hex_ok) for part in value.split(".") if len(part) >= 16)
    if value.startswith("0x") or max(map(len, re.findall(r"[A-Za-z0-9]+", value)), default=0) < 12:
        return False  # a hex literal, or short parts joined (`tool_arg_key_b9d4f5c2`)
    if len(_CAMEL_WORD.findall(value)) >= 2:
        return False  # CamelCase names with version digits (`Wav2Vec2FeatureExtractor`)
    digits = sum(c.isdigit() for c in value)
    letters = sum(c.isalpha() for c in value)
    upper = sum(c.isupper() for c in value) / max(letters, 1)
    # Mixed case near half and half (random base62); camelCase names are mostly lowercase.
    mixed = len(value) >= 20 and 0.3 <= upper <= 0.7 and _entropy(value) >= 3.8
    runs = [len(r) for r in re.findall(r"[a-z]+", value)]  # random: short; names: words
    mixed = mixed and max(runs, default=0) <= 7 and sum(runs) / max(len(runs), 1) < 2.8
    if not letters or not (digits or mixed):
        return False
    low = value.lower()
    hexlen = len(value) == 40 or (len(value) in _HASH_HEX and not hex_ok)
    single_case_hex = all(c in "0123456789abcdef" for c in low) and value in (low, value.upper())
    if hexlen and single_case_hex:
        return False  # a digest or git object id
    # Letter/digit alternations: random tokens have many, identifiers (sha256_v2) a few.
    flips = sum(
        a.isdigit() != b.isdigit()
        for a, b in itertools.pairwise(value)
        if a.isalnum() and b.isalnum()
    )
    return (flips >= 4 and _entropy(value) >= 3.4) or mixed


def _unescaped(text: str, token: re.Match[str]) -> tuple[int, str]:
    """A token's start and value, without a sentence's final dot or the letter of a `\\n`
    escape it follows (JSON-escaped text: `...\\nMIIE...` is a new line starting `MIIE`)."""
    at, value = token.start(), token.group().rstrip(".")
    if at > 0 and text[at - 1] == "\\" and value[:1] in ("n", "r", "t"):
        at, value = at + 1, value[1:]
    return at, value


def assigned_spans(text: str) -> list[Span]:
    """A random token assigned to any name (`miro => "..."`, `upstash: ...`), stricter than
    `keyword_spans`: 20+ characters, not hex, and the name does not say it is an id or a digest."""
    spans: list[Span] = []
    for m in _ASSIGN.finditer(text):
        t = _TOKEN.match(text, m.end())
        if t is None:
            continue
        at, value = _unescaped(text, t)
        name = _NAME_BEFORE.search(text, max(m.start() - 44, 0), m.start())
        if name is None or _PUBLIC_NAMES.search(name.group(1)):
            continue
        if all(c in _HEX_OR_SEP for c in value) or not looks_random(value):
            continue
        spans.append((at, at + len(value), GENERIC, "secret_assignment"))
    return spans


def keyword_spans(text: str, lower: str) -> list[Span]:
    """Random-looking tokens just after a credential word on the same line."""
    spans: list[Span] = []
    taken = -1
    for m in _KEYWORD.finditer(lower):
        start = m.end()
        if start <= taken:
            continue
        if lower.startswith(("csrf", "xsrf"), m.start() - 5, m.start()):
            continue  # anti-forgery tokens are printed in every page they protect
        hex_ok = m.group() != "key"
        # The word inside a token (`AIK_SECRET_J5x...`, `sb_secret_...`): the token itself.
        a, b = m.start(), start
        while a > 0 and text[a - 1] in _WORD_CHARS:
            a -= 1
        while b < len(text) and text[b] in _WORD_CHARS:
            b += 1
        if (a, b) != m.span() and looks_random(text[a:b], hex_ok):
            spans.append((a, b, GENERIC, "secret_near_keyword"))
            taken = b
            continue
        line_end = lower.find("\n", start)
        limit = min(len(text) if line_end < 0 else line_end, start + _WINDOW + 1024)
        for t in _TOKEN.finditer(text, start, limit):
            if t.start() >= start + _WINDOW:
                break
            at, value = _unescaped(text, t)
            if looks_random(value, hex_ok):
                spans.append((at, at + len(value), GENERIC, "secret_near_keyword"))
                taken = t.end()
                break
    return spans


def block_spans(text: str, lower: str) -> list[Span]:
    """OpenVPN static keys and inline `<key>`/`<tls-auth>`/... sections, whole."""
    if "openvpn static key" not in lower and "</" not in text:
        return []
    return [(m.start(), m.end(), STRUCT, "private_key") for m in _BLOCKS.finditer(text)]


def lone_spans(text: str) -> list[Span]:
    """Long tokens that are random on their own, whatever surrounds them (strict thresholds)."""
    spans: list[Span] = []
    for m in _LONE.finditer(text):
        value = m.group(1)
        if is_public_id(m.group()) or not (
            any(map(str.isupper, value)) and any(map(str.islower, value))
        ):
            continue
        flips = sum(a.isdigit() != b.isdigit() for a, b in itertools.pairwise(value))
        if flips >= 6 and _entropy(value) >= 4.2 and looks_random(value):
            spans.append((m.start(), m.end(), GENERIC, "secret_token"))
    return spans
