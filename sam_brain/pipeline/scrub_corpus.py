"""A secrets corpus made from the maintained engine's own rules, to measure the scrubber's recall.

Neither engine on PyPI ships its rules' example secrets (kingfisher-secret-scanner's
`Rules.detail()` has an empty `examples` list for every built-in rule), but both ship the rule
regexes: kingfisher-secret-scanner bundles Betterleaks' rules and Google's Veles detectors. So each
sample is generated from a rule's regex with a random generator seeded by the rule id (the same
corpus on every run and machine), and the secret is the rule's secret group in that sample, read
back with Python's `re`. Rules are split by a hash of their id into a development part and a
held-out part (about 30%) whose formats are never looked at while tuning rules.

`negatives()` is the code look-alike set: ids, digests, hashes and ordinary code near credential
words, none of which may be altered. Used by bench/scrub_secrets.py and tests/pipeline/test_scrub_corpus.py.
"""

from __future__ import annotations

import random
import re
import string
import uuid
import zlib
from dataclasses import dataclass
from re import _constants as sre  # type: ignore[attr-defined]  # the parser's opcodes
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

HELD_OUT_PERCENT = 30
PER_RULE = 3
_PRINTABLE = string.ascii_letters + string.digits + "-_.+/=:@"
_CATEGORY = {
    sre.CATEGORY_DIGIT: string.digits,
    sre.CATEGORY_WORD: string.ascii_letters + string.digits + "_",
    sre.CATEGORY_SPACE: " ",
    sre.CATEGORY_NOT_DIGIT: string.ascii_letters,
    sre.CATEGORY_NOT_WORD: " -.:",
    sre.CATEGORY_NOT_SPACE: string.ascii_letters + string.digits,
}
_POSIX = {"alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "digit": "0-9", "upper": "A-Z", "lower": "a-z",
          "xdigit": "0-9a-fA-F", "space": r"\s", "punct": r"!-/:-@\[-`{-~", "word": r"\w"}  # fmt: skip
_CONTEXT = (("", ""), ("", "\n"), ("got: ", "\n"), ("  ", "\n"), ("> ", " (from the logs)\n"))


@dataclass(frozen=True)
class Example:
    rule: str  # the engine's rule id
    text: str  # what is scrubbed
    secret: str  # what must not survive


def to_python(pattern: str) -> tuple[str, int]:
    """An RE2/Rust pattern as a Python one, and the flags lifted out of it.

    Inline flags in the middle of a pattern (`\\b(p8e-(?i)[a-z0-9]{32})`) are not Python; they
    are dropped and applied to the whole pattern, which only widens what matches.
    """
    flags = 0
    for found in set(re.findall(r"\(\?([a-zA-Z]+)\)", pattern)):
        flags |= (re.I if "i" in found else 0) | (re.S if "s" in found else 0)
        flags |= re.M if "m" in found else 0
    python = re.sub(r"\(\?[a-zA-Z]+\)", "", pattern)
    python = re.sub(r"\(\?-[a-zA-Z]+:", "(?:", python).replace(r"\z", r"\Z")
    python = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", python)
    python = re.sub(r"\[:(\w+):\]", lambda m: _POSIX.get(m.group(1), r"\w"), python)
    python = re.sub(r"\\[pP]\{?\w+\}?", r"\\w", python)
    return python, flags


class _Generator:
    """Writes one string the parsed pattern matches (bounded repeats, ASCII only)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.groups: dict[int, str] = {}

    def run(self, parsed: Any) -> str:
        return "".join(self.item(op, av) for op, av in parsed)

    def item(self, op: Any, av: Any) -> str:
        rng = self.rng
        if op is sre.LITERAL:
            return chr(av)
        if op is sre.NOT_LITERAL:
            return rng.choice([c for c in _PRINTABLE if ord(c) != av])
        if op is sre.ANY:
            return rng.choice(string.ascii_letters + string.digits)
        if op is sre.IN:
            return self.charset(av)
        if op is sre.CATEGORY:
            return rng.choice(_CATEGORY.get(av, "x"))
        if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            low, high, sub = av
            if low == 0 and high is not sre.MAXREPEAT and high <= 20:
                count = min(high, rng.choice((0, 0, 1, 1, 2)))  # separators read naturally
            else:
                count = rng.randint(low, min(high, low + 6))  # MAXREPEAT is a large int
            return "".join(self.run(sub) for _ in range(count))
        if op is sre.SUBPATTERN:
            group, _, _, sub = av
            out = self.run(sub)
            if group:
                self.groups[group] = out
            return out
        if op is sre.BRANCH:
            return self.run(rng.choice(av[1]))
        if op is sre.GROUPREF:
            return self.groups.get(av, "")
        if op is sre.ATOMIC_GROUP:
            return self.run(av)
        return ""  # AT (anchors, \b), lookarounds: the match is checked afterwards

    def charset(self, items: list[tuple[Any, Any]]) -> str:
        negate = bool(items) and items[0][0] is sre.NEGATE
        chars: set[str] = set()
        for op, av in items[1:] if negate else items:
            if op is sre.LITERAL:
                chars.add(chr(av))
            elif op is sre.RANGE:
                chars.update(chr(c) for c in range(av[0], min(av[1], 0x7E) + 1))
            elif op is sre.CATEGORY:
                chars.update(_CATEGORY.get(av, ""))
        if negate:
            chars = set(_PRINTABLE) - chars
        pool = sorted(c for c in chars if c.isprintable() or c in " \t")
        return self.rng.choice(pool or ["x"])


def secret_of(match: re.Match[str], group: int) -> str:
    """The rule's secret: its numbered group, else a named password/secret/key/token group
    (Veles' URL rules capture the whole URL first), else the first group that matched, else all."""
    if group:
        return match.group(group) or ""
    for name, value in match.groupdict().items():
        if value and value != match.group() and re.search(r"(?i)pass|secret|key|token", name):
            return value
    return next((g for g in match.groups() if g), match.group())


def examples_for(rule: str, pattern: str, group: int, n: int = PER_RULE) -> list[Example]:
    """Up to `n` distinct samples of one rule (fewer when the pattern is not Python-readable)."""
    python, flags = to_python(pattern)
    try:
        parsed = sre_parse.parse(python, flags)
        compiled = re.compile(python, flags)
    except (re.error, OverflowError, RecursionError):
        return []
    rng = random.Random(zlib.crc32(rule.encode()))
    out: dict[str, Example] = {}
    for attempt in range(n * 8):
        if len(out) >= n:
            break
        body = _Generator(rng).run(parsed)
        before, after = _CONTEXT[attempt % len(_CONTEXT)]
        text = before + body + after
        match = compiled.search(text)
        secret = secret_of(match, group).strip() if match else ""
        if len(secret) >= 6 and secret not in out:
            out[secret] = Example(rule, text, secret)
    return list(out.values())


def held_out(rule: str) -> bool:
    return zlib.crc32(rule.encode()) % 100 < HELD_OUT_PERCENT


def engine_examples() -> tuple[list[Example], list[Example], int]:
    """The development and held-out parts, and how many rules yielded no sample.

    Invisible rules (components another rule needs, such as a client id) are left out: they
    name no secret on their own.
    """
    from kingfisher_sdk import Rules

    rules = Rules(confidence="low")
    dev: list[Example] = []
    held: list[Example] = []
    skipped = 0
    for meta in sorted(rules.metadata(), key=lambda m: str(m["id"])):
        if not meta["visible"]:
            continue
        detail = rules.detail(meta["id"])
        found = examples_for(meta["id"], detail["pattern"], detail["betterleaks_secret_group"])
        skipped += not found
        (held if held_out(meta["id"]) else dev).extend(found)
    return dev, held, skipped


def leaked(secret: str, output: str) -> bool:
    """The secret, or half of it (8 characters at least), still readable in the output."""
    if secret in output:
        return True
    width = max(8, len(secret) // 2)
    return any(secret[i : i + width] in output for i in range(0, len(secret) - width + 1))


def negatives() -> list[str]:
    """Code and log look-alikes (seeded), none of which may be altered by scrubbing."""
    rng = random.Random(13)

    def hexs(n: int) -> str:
        return "".join(rng.choice("0123456789abcdef") for _ in range(n))

    def b62(n: int) -> str:
        return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(n))

    out: list[str] = []
    for _ in range(6):
        sha, uid, agent = hexs(40), str(uuid.UUID(int=rng.getrandbits(128))), "a" + hexs(16)
        out += [
            f"commit {sha}\nMerge: {sha[:7]} {hexs(7)}",
            f'"sessionId": "{uid}", "parentUuid": "{uuid.UUID(int=rng.getrandbits(128))}"',
            f"Async agent launched. agentId: {agent} (use SendMessage with to: '{agent}')",
            f'{{"type": "tool_use", "id": "toolu_01{b62(22)}", "name": "Bash"}}',
            f'{{"tool_use_id": "toolu_01{b62(22)}", "request_id": "req_011C{b62(20)}"}}',
            f'message "msg_01{b62(22)}" from srvtoolu_01{b62(22)}',
            f'"cache_key": "{sha}"\nkey = "{hexs(64)}"  # sha256 of the file',
            f"docker pull ghcr.io/org/app@sha256:{hexs(64)}",
            f"git rev-parse HEAD\n{sha}\ngit log --format=%H -1 -- token.py\n{hexs(40)}",
            f'"integrity": "sha512-{b62(86)}=="',
            f"golang.org/x/crypto v0.31.0 h1:{b62(43)}=",
            f"id_token_hint = None  # {uid}\ncolor: #{hexs(6)}; key={rng.randint(1, 999)}",
            f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{b62(43)} dev@laptop",
            f"user_key_id = {rng.randint(10**6, 10**9)}\ntoken_count = {rng.randint(1, 9999)}",
            f'trace_id="{hexs(32)}" span_id="{hexs(16)}"',
            f'<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAB{b62(40)}==">',
            f'const LOGO = "iVBORw0KGgoAAAANSUhEUgAAAA{b62(48)}";\nconst PDF = "JVBERi0xLjcK{b62(30)}"',
            f'<script src="/assets/app.{hexs(20)}.js" integrity="sha384-{b62(64)}"></script>',
        ]
    out += [
        "def rotate(secret_name: str, key_id: str) -> None:\n    password = getpass.getpass()",
        'token = tokenizer.encode(text)\nkey = lambda item: item.sort_key\ncache_key = f"u:{uid}"',
        'SECRET_KEY = env("DJANGO_SECRET_KEY")\napi_key = os.environ["OPENAI_API_KEY"]',
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUTx\n-----END CERTIFICATE-----",
        "for key, value in sorted(tokens.items(), key=itemgetter(1)):\n    print(key, value)",
        "password_validators = [MinimumLengthValidator, CommonPasswordValidator]",
        "token_type_hint: access_token\ngrant_type: client_credentials\nscope: read:org",
        'auth = HTTPBasicAuth(user, password)\nheaders = {"Authorization": f"Bearer {token}"}',
        "PRIMARY KEY (user_id, token_hash)\nCREATE INDEX idx_token_hash ON sessions (token_hash);",
        "the key insight: tokens per second doubled after the cache fix",
        "keyboard-interactive authentication; passwordless sudo; secretary of state",
        "https://github.com/org/repo/blob/9a038989604e8da62ecddbe2094b16ce1b778be1/src/auth.py",
        "postgres://localhost:5432/app and redis://cache:6379/0 (no credentials in the URL)",
        "export DATABASE_URL=postgres://app@db:5432/app?sslmode=require",
        "<dict>\n  <key>CFBundleIdentifier</key>\n  <string>com.example.app</string>\n"
        "  <key>SecretsManagerEnabled</key>\n  <true/>\n</dict>",
    ]
    return out


def missed(scrub: Any, examples: list[Example]) -> list[Example]:
    """The examples whose secret is still readable after `scrub(text) -> scrubbed text`."""
    from sam_brain.pipeline.scrub import MARKER_RE

    return [e for e in examples if leaked(e.secret, MARKER_RE.sub("", scrub(e.text)))]


def new_layer_hits(text: str) -> list[tuple[int, int, int, str]]:
    """What the issue-13 layers (context rules and engine) find in `text`, before merging."""
    from sam_brain.pipeline.scrub_context import (
        assigned_spans,
        block_spans,
        keyword_spans,
        lone_spans,
    )
    from sam_brain.pipeline.scrub_engine import engine_spans

    lower = text.lower()
    return (
        keyword_spans(text, lower) + assigned_spans(text) + lone_spans(text)
        + block_spans(text, lower) + engine_spans(text)
    )  # fmt: skip
