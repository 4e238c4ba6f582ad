"""Credential scrubbing: every sample is scrubbed before it reaches the pool (logs and API output too).

Detection uses detect-secrets' (Yelp) plugin classes directly, each behind a cheap trigger regex so a
plugin only runs on the lines that could match it; our own rules cover what detect-secrets misses
(whole PEM blocks, URL and curl credentials, auth headers, `.env`-style assignments, vendor prefixes
such as `sk-`, `AIza`, `hf_`). Each hit becomes `[REDACTED:<kind>]`, a value found once is redacted
everywhere in the same text, home directories become `~` and e-mail addresses are redacted
(optional). Existing markers are never matched again, so scrubbing twice changes nothing more.
docs/scrubbing.md lists every rule, where it comes from and the false-positive filters.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
import json
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detect_secrets.filters import heuristic
from detect_secrets.plugins import (
    artifactory,
    aws,
    azure_storage_key,
    basic_auth,
    cloudant,
    discord,
    github_token,
    gitlab_token,
    high_entropy_strings,
    ibm_cloud_iam,
    ibm_cos_hmac,
    ip_public,
    jwt,
    keyword,
    mailchimp,
    npm,
    openai,
    pypi_token,
    sendgrid,
    softlayer,
    square_oauth,
    stripe,
    telegram_token,
    twilio,
)

from sam_brain.protocols import Sample

MARKER_RE = re.compile(r"\[REDACTED:[a-z0-9_]+\]")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+/=.~")
_STOPWORDS = (
    "your",
    "insert",
    "placeholder",
    "changeme",
    "change_me",
    "example",
    "dummy",
    "redacted",
    "replace",
    "here",
    "todo",
    "fixme",
)
# Values with these prefixes belong to a vendor rule; generic rules defer to its verdict.
_VENDOR_PREFIX = re.compile(
    r"(?:xox[a-z]|xapp|gh[pousr]|github_pat|pplx|hf|sk|[rs]k_(?:live|test))[-_]|AIza"
)
_PRIORITY_VENDOR, _PRIORITY_STRUCTURE, _PRIORITY_GENERIC, _PRIORITY_PII = 0, 1, 2, 3

Span = tuple[int, int, int, str]  # start, end, priority, kind


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _is_placeholder(value: str) -> bool:
    low = value.lower()
    body = re.sub(r"^[a-z]{2,10}[-_]", "", low)
    if len(set(body)) <= 3 or re.search(r"x{5,}|\*{3,}|\.\.\.|…", low):
        return True
    return any(word in low for word in _STOPWORDS)


def _is_templated(value: str) -> bool:
    return value[:1] in "${<%@#" or value[-1:] in "}>)" or "{{" in value or "${" in value


def _plausible_value(value: str) -> bool:
    """Our filter for generic (keyword-style) hits: drops references, placeholders and words."""
    if len(value) < 8 or any(c.isspace() for c in value) or _is_templated(value):
        return False
    if _is_placeholder(value) or _VENDOR_PREFIX.match(value) or "(" in value or "[" in value:
        return False
    if re.match(r"[a-z][a-z0-9+.-]*://|\.{0,2}/|~/", value, re.I):  # URLs and paths
        return False
    if re.fullmatch(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+", value):  # settings.SECRET_KEY
        return False
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(not c.isalnum() and c not in "_-." for c in value)
    mixed = any(c.isupper() for c in value) and any(c.islower() for c in value)
    if not (has_digit or has_symbol or mixed):
        return False  # a single-case word or identifier: PASSWORD, insert_key_here
    return has_digit or has_symbol or _entropy(value) >= 3.5


def _generic_ok(value: str, line: str) -> bool:
    """detect-secrets' own heuristic filters plus ours, for keyword and high-entropy hits."""
    if (
        heuristic.is_sequential_string(value)
        or heuristic.is_potential_uuid(value)
        or heuristic.is_likely_id_string(value, line)
        or heuristic.is_templated_secret(value)
        or heuristic.is_prefixed_with_dollar_sign(value)
        or heuristic.is_indirect_reference(line)
        or heuristic.is_not_alphanumeric_string(value)
    ):
        return False
    return not (
        _is_placeholder(value)
        or _VENDOR_PREFIX.match(value)
        or _is_templated(value)
        or any(c.isspace() for c in value)
        or re.fullmatch(r"[A-Z_]+|[a-z_]+", value)
    )


def _hex_ok(value: str, line: str) -> bool:
    # A quoted 40/64-char single-case hex string is a git object id or a sha256 digest.
    if len(value) in (40, 64) and (value == value.lower() or value == value.upper()):
        return False
    return _generic_ok(value, line)


def _public_ip_ok(value: str, line: str) -> bool:
    ip = ipaddress.ip_address(value.split(":")[0])
    return bool(ip.is_global) and not ip.is_multicast  # drops 169.254/16, 100.64/10, 0/8, TEST-NETs


def _not_placeholder(value: str, line: str = "") -> bool:
    return not _is_placeholder(value)


def _slack_ok(value: str) -> bool:
    groups = re.findall(r"-(\d+)(?=-)", value)
    if groups and len(groups[0]) == 1:
        groups = groups[1:]  # a leading one-digit version (xoxa-2-...)
    return bool(groups) and all(len(g) >= 8 for g in groups)


def _vault_legacy_ok(value: str) -> bool:
    body = value[2:]
    return sum(c.isdigit() for c in body) >= 2 and _plausible_value(body)


def _hf_ok(value: str) -> bool:
    return any(c.isupper() for c in value) and _entropy(value) >= 3.5


def _sk_ok(value: str) -> bool:
    return any(c.isdigit() for c in value) and not _is_placeholder(value)


@dataclass(frozen=True)
class _Plugin:
    kind: str
    plugin: Any
    trigger: re.Pattern[str]  # finds candidate lines; run on the lowercased text when `lower`
    lower: bool
    gate: tuple[str, ...]  # lowercase literals, one of which must occur before `trigger` runs
    check: Callable[[str, str], bool] | None
    priority: int
    entropy_limit: float | None


def _p(
    kind: str,
    plugin: Any,
    trigger: str,
    check: Callable[[str, str], bool] | None = None,
    priority: int = _PRIORITY_VENDOR,
    lower: bool = False,
    gate: tuple[str, ...] = (),
) -> _Plugin:
    limit = getattr(plugin, "entropy_limit", None)
    return _Plugin(kind, plugin, re.compile(trigger), lower, gate, check, priority, limit)


# Each trigger is a necessary condition of the plugin's own regexes (checked against its source),
# written to start with a literal where possible: Python's re scans fastest for a literal prefix.
_PLUGINS = (
    _p("artifactory_token", artifactory.ArtifactoryDetector(), r"AKC|AP[\dA-F]"),
    _p(
        "aws_key",
        aws.AWSKeyDetector(),
        r"a(?:3t|bia|cca|kia|sia|ws)",
        lower=True,
        gate=("a3t", "abia", "acca", "akia", "asia", "aws"),
    ),
    _p("azure_storage_key", azure_storage_key.AzureStorageKeyDetector(), r"AccountKey="),
    _p("basic_auth", basic_auth.BasicAuthDetector(), r"://", priority=_PRIORITY_STRUCTURE),
    _p(
        "cloudant",
        cloudant.CloudantDetector(),
        r"cl(?:oudant|ou)?[-_]?(?:api)?(?:key|pw|pass|token)|\.cloudant\.com",
        lower=True,
        gate=("cl",),
    ),
    _p("discord_bot_token", discord.DiscordBotTokenDetector(), r"\.[\w-]{6}\.[\w-]{27}"),
    _p("github_token", github_token.GitHubTokenDetector(), r"gh[pousr]_", _not_placeholder),
    _p(
        "gitlab_token",
        gitlab_token.GitLabTokenDetector(),
        r"gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-|gr1348941",
        lower=True,
        gate=("gl", "gr1348941"),
    ),
    _p(
        "ibm_cloud_iam",
        ibm_cloud_iam.IbmCloudIamDetector(),
        r"(?:key|pwd|pass(?:word)?|token)[ \"'\]=:>]*[\w-]{44}",
        lower=True,
        gate=("key", "pwd", "pass", "token"),
    ),
    _p(
        "ibm_cos_hmac",
        ibm_cos_hmac.IbmCosHmacDetector(),
        r"secret[-_]?(?:access)?[-_]?key",
        lower=True,
        gate=("secret",),
    ),
    _p(
        "public_ip",
        ip_public.IPPublicDetector(),
        r"\.\d{1,3}\.\d{1,3}\.\d",
        _public_ip_ok,
        _PRIORITY_PII,
    ),
    _p("jwt", jwt.JwtTokenDetector(), r"eyJ"),
    _p("mailchimp_key", mailchimp.MailchimpDetector(), r"-us\d"),
    _p("npm_token", npm.NpmDetector(), r"_authToken="),
    _p("openai_api_key", openai.OpenAIDetector(), r"T3BlbkFJ"),
    _p("pypi_token", pypi_token.PypiTokenDetector(), r"pypi-AgE"),
    _p("sendgrid_key", sendgrid.SendGridDetector(), r"SG\."),
    _p(
        "softlayer",
        softlayer.SoftlayerDetector(),
        r"softlayer|sl[-_]?(?:api)?[-_]?(?:key|pwd|pass|token)",
        lower=True,
        gate=("sl", "softlayer"),
    ),
    _p("square_oauth", square_oauth.SquareOAuthDetector(), r"sq0csp-"),
    _p("stripe_key", stripe.StripeDetector(), r"k_live_"),
    _p("telegram_bot_token", telegram_token.TelegramBotTokenDetector(), r":(?<=\d:)[\w-]{35}"),
    _p("twilio_key", twilio.TwilioKeyDetector(), r"(?:AC|SK)[a-z0-9]{32}"),
    _p(
        "secret_keyword",
        keyword.KeywordDetector(),
        r"(?:api|auth|service|account|db|database|priv|private|client)_?key|db_?pass"
        r"|database_?pass|key_?pass|password|passwd|pwd|secret|contrase",
        _generic_ok,
        _PRIORITY_GENERIC,
        lower=True,
        gate=("key", "pass", "pwd", "secret", "contrase"),
    ),
    _p(
        "high_entropy_base64",
        high_entropy_strings.Base64HighEntropyString(),
        r"['\"][\w+/=-]{23,}['\"]",
        _generic_ok,
        _PRIORITY_GENERIC,
    ),
    _p(
        "high_entropy_hex",
        high_entropy_strings.HexHighEntropyString(),
        r"['\"][0-9a-fA-F]{9,}['\"]",
        _hex_ok,
        _PRIORITY_GENERIC,
    ),
)


@dataclass(frozen=True)
class _Rule:
    kind: str
    pattern: re.Pattern[str]
    trigger: str  # a lowercase literal that must occur in the lowercased text
    group: int = 0
    check: Callable[[str], bool] | None = None
    priority: int = _PRIORITY_VENDOR


def _r(
    kind: str,
    pattern: str,
    trigger: str,
    group: int = 0,
    check: Callable[[str], bool] | None = None,
    priority: int = _PRIORITY_VENDOR,
    flags: int = 0,
) -> _Rule:
    return _Rule(kind, re.compile(pattern, flags), trigger, group, check, priority)


_B = r"(?<![\w-])"  # token start: not inside a longer word
_E = r"(?![\w-])"
_RULES = (
    # Structural rules: whole blocks, credentials inside URLs, command lines and headers.
    _r(
        "private_key",
        r"-{4,5} ?BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)? ?-{4,5}"
        r"(?:(?s:.*?)-{4,5} ?END \1PRIVATE KEY(?: BLOCK)? ?-{4,5}"
        r"|(?:[A-Za-z0-9+/=:, \t\r\n-]|\\[rn])*)",
        "private key",
        priority=_PRIORITY_STRUCTURE,
    ),
    _r(
        "private_key",
        r"PuTTY-User-Key-File-\d:(?s:.*?)(?:Private-MAC: ?[0-9a-fA-F]+|\Z)",
        "putty-user-key",
        priority=_PRIORITY_STRUCTURE,
    ),
    _r(
        "url_credentials",
        r"://([^\s:/?#\[\]@\"'<>{}]*:[^\s/?#\[\]@\"'<>]+)@",
        "://",
        1,
        lambda v: not _is_templated(v.split(":", 1)[1]) and not _is_placeholder(v.split(":", 1)[1]),
        _PRIORITY_STRUCTURE,
    ),
    _r(
        "curl_credentials",
        r"\bcurl\b(?:\\\r?\n|[^\n])*?\s(?:-u|--user)(?:\s+|=)((?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'])+)",
        "curl",
        1,
        lambda v: ":" in v and not v.lstrip("\"'").startswith("$"),
        _PRIORITY_STRUCTURE,
    ),
    _r(
        "mysql_password",
        r"\bmysql(?:dump|admin)?\b[^\n]*?\s-p('[^'\n]+'|\"[^\"\n]+\"|[^\s'\"-]\S*)",
        "mysql",
        1,
        lambda v: not _is_templated(v.strip("'\"")),
        _PRIORITY_STRUCTURE,
    ),
    _r(
        "auth_header",
        r"(?:-H|--header)\s*=?\s*([\"'])\s*[\w-]*(?i:auth|token|key|secret|passw)[\w-]*\s*:\s*"
        r"(?i:(?:bearer|basic|token|api-token|apikey|digest)\s+)?([^\"'\s]+)",
        "-",
        2,
        lambda v: not _is_templated(v),
        _PRIORITY_STRUCTURE,
    ),
    _r(
        "auth_header",
        r"(?i:\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
        r"([^\s\"'<>{}]+)",
        "authorization",
        1,
        lambda v: (
            len(v) >= 8
            and v.lower() not in ("bearer", "basic", "token", "digest")
            and not _is_templated(v)
            and _plausible_value(v)
        ),
        _PRIORITY_STRUCTURE,
    ),
    _r(
        "slack_webhook",
        r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9+/_-]+",
        "hooks.slack.com",
    ),
    # Vendor token formats detect-secrets has no plugin for (or a narrower one).
    _r("anthropic_api_key", _B + r"sk-ant-[a-z]+\d\d-[A-Za-z0-9_-]{20,}", "sk-ant-"),
    _r(
        "openai_api_key",
        _B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}",
        "sk-",
        check=_sk_ok,
    ),
    _r("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}" + _E, "aiza"),
    _r("huggingface_token", _B + r"hf_[A-Za-z]{34}(?![A-Za-z0-9_])", "hf_", check=_hf_ok),
    _r("huggingface_token", _B + r"api_org_[A-Za-z]{34}(?![A-Za-z0-9_])", "api_org_", check=_hf_ok),
    _r(
        "github_token",
        _B + r"github_pat_[A-Za-z0-9_]{22,255}",
        "github_pat_",
        check=_not_placeholder,
    ),
    _r("slack_token", _B + r"xox[abposr]-(?:\d+-)+[A-Za-z0-9-]+", "xox", check=_slack_ok),
    _r("slack_token", _B + r"(?:xoxe\.xox[bp]-|xoxe-)\d-[A-Za-z0-9]{100,}", "xoxe"),
    _r("slack_token", _B + r"xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+", "xapp-"),
    _r("age_secret_key", r"AGE-SECRET-KEY-1[0-9A-Z]{58}", "age-secret-key-1"),
    _r("atlassian_token", _B + r"ATATT3[A-Za-z0-9_=-]{150,}", "atatt3"),
    _r("aws_bedrock_key", _B + r"ABSK[A-Za-z0-9+/]{100,}={0,2}", "absk"),
    _r("aws_bedrock_key", _B + r"bedrock-api-key-[A-Za-z0-9+/=]{20,}", "bedrock-api-key-"),
    _r("notion_token", _B + r"ntn_[A-Za-z0-9]{40,50}" + _E, "ntn_"),
    _r("onepassword_token", _B + r"ops_eyJ[A-Za-z0-9+/_=-]{50,}", "ops_eyj"),
    _r("vault_token", _B + r"hvs\.[A-Za-z0-9_-]{90,}", "hvs."),
    _r("vault_token", r"s\.(?<![\w.]s\.)[A-Za-z0-9]{24}(?![\w.])", "s.", check=_vault_legacy_ok),
    _r("intra42_secret", r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b", "s-s4t2"),
    _r("octopus_api_key", r"\bAPI-[A-Z0-9]{26}\b", "api-"),
    _r("perplexity_api_key", _B + r"pplx-[A-Za-z0-9]{48}", "pplx-", check=_not_placeholder),
    _r("sourcegraph_token", _B + r"sgp_(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}" + _E, "sgp_"),
    _r("azure_client_secret", r"(?<![\w~.-])[\w~.-]{3}\dQ~[\w~.-]{31,34}(?![\w~.-])", "q~"),
    _r(
        "facebook_token",  # app-id|secret: the app id is public, the part after `|` is not
        r"\|(?:(?<=(?<!\d)\d{15}\|)|(?<=(?<!\d)\d{16}\|))([A-Za-z0-9_-]{27})" + _E,
        "|",
        1,
    ),
    _r("facebook_token", _B + r"EAA[A-Z][A-Za-z0-9]{60,}", "eaa"),
    _r("cloudflare_ca_key", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", "v1.0-"),
    _r("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, "npm_", check=_not_placeholder),
    _r("digitalocean_token", _B + r"do[por]_v1_[a-f0-9]{64}" + _E, "_v1_"),
    _r("shopify_token", _B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + _E, "shp"),
    _r("linear_api_key", _B + r"lin_api_[A-Za-z0-9]{40}" + _E, "lin_api_"),
    _r("postman_api_key", _B + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}" + _E, "pmak-"),
    _r("stripe_key", _B + r"[rs]k_test_[0-9a-zA-Z]{24,}" + _E, "k_test_", check=_not_placeholder),
    _r(
        "sourcegraph_token",
        r"sourcegraph[\w-]*[\"']?\s*[:=]\s*[\"']?([a-fA-F0-9]{40})" + _E,
        "sourcegraph",
        1,
        flags=re.I,
    ),
)

# `.env` / YAML / JSON / CLI assignments whose key names a credential (see _key_is_credential).
_KEY_WORDS = r"(?:token|secret|pass|pw|key|credential|auth)[\w.-]*"
_KEY_SEP_RE = re.compile(_KEY_WORDS + r"(?=[\"'\]]?[ \t]*(?::=|=>|=(?!=)|:))")  # on lowercased text
_FLAG_RE = re.compile(r"--[\w.-]*" + _KEY_WORDS + r"(?=[ \t])")
_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_ASSIGN_RE = re.compile(
    r"(?:[\"'\]][ \t]*(?::=|=>|=(?!=)|:)|[ \t]*(?::=|=>|=(?!=)|:(?=[ \t])))[ \t]*@?"
    r"(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|`(?P<bq>[^`\n]*)`|(?P<bare>[^\s\"'`,;)}\]]+))"
)
_FLAG_VALUE_RE = re.compile(
    r"[ \t]+(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s\"'`;|&]+))"
)
_CRED_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pwd",
    "pw",
    "pass",
    "apikey",
    "credential",
    "credentials",
    "auth",
)
_KEY_QUALIFIERS = (
    "api",
    "access",
    "secret",
    "private",
    "auth",
    "client",
    "master",
    "account",
    "service",
    "signing",
    "encryption",
    "license",
    "app",
    "admin",
    "db",
    "database",
    "priv",
    "subscription",
    "consumer",
    "webhook",
    "session",
)


def _key_is_credential(key: str) -> bool:
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", key)]
    while words and words[-1].isdigit():
        words.pop()
    if not words:
        return False
    last = words[-1]
    if last in _CRED_WORDS:
        return True
    if last.endswith(("token", "secret", "password", "passwd")):  # PGPASSWORD, authtoken
        return True
    if last.endswith("key") and last[:-3] in _KEY_QUALIFIERS:  # apikey, secretkey
        return True
    return last == "key" and len(words) > 1 and words[-2] in _KEY_QUALIFIERS


# Literal-led patterns (`@`, `/`): the local part of an address is widened by hand in _emails.
_EMAIL_DOMAIN_RE = re.compile(r"@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
_EMAIL_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
_EMAIL_KEEP_RE = re.compile(
    r"(?i)^(?:git|noreply|no-reply)@|@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|test|invalid|localhost)$"
    r"|\.(?:png|jpe?g|gif|svg|webp|ico|js|ts|py|css|html|json|md|txt|lock)$"
)
_HOME_RE = re.compile(
    r"/(?<![\w.~-]/)(?:home|Users)/(?!Shared(?![\w.-]))[A-Za-z0-9_-][A-Za-z0-9._-]*"
)


class Scrubber:
    """Redacts credentials (and optionally e-mail addresses) and shortens home paths to `~`.

    Args:
        redact_emails: replace e-mail addresses with `[REDACTED:email]`.
        home: the home directory to replace with `~` (default: `Path.home()`); `/home/<user>` and
            `/Users/<user>` are replaced for every user either way.
    """

    def __init__(self, redact_emails: bool = True, home: str | None = None) -> None:
        self.redact_emails = redact_emails
        home = (home if home is not None else str(Path.home())).rstrip("/")
        self._home = home if len(home) > 1 else None
        self._home_re = re.compile(re.escape(home) + r"(?![\w.-])")

    def scrub_text(self, text: str) -> tuple[str, Counter[str]]:
        """Redact one text.

        Returns:
            The redacted text and the number of redactions of each kind (`home_path` included).
        """
        counts: Counter[str] = Counter()
        if not text:
            return text, counts
        spans = self._find(text) if len(text) >= 7 else []  # 1.1.1.1 is the shortest hit
        if spans:
            text = _apply(text, spans, counts)
        if self._home is not None and self._home in text:
            text, n = self._home_re.subn("~", text)
            counts["home_path"] += n
        if "/home/" in text or "/Users/" in text:
            text, n = _HOME_RE.subn("~", text)
            counts["home_path"] += n
        return text, +counts

    def scrub_sample(self, sample: Sample) -> tuple[Sample, Counter[str]]:
        """Scrub messages (content and tool calls), chosen/rejected and string values in meta.

        Returns:
            A new sample and the counts of redactions by kind; the input is not modified.
        """
        counts: Counter[str] = Counter()

        def scrub(value: str) -> str:
            out, found = self.scrub_text(value)
            counts.update(found)
            return out

        messages = [_scrub_tree(m, scrub) for m in sample.messages]
        new = dataclasses.replace(
            sample,
            messages=messages,
            chosen=scrub(sample.chosen),
            rejected=scrub(sample.rejected),
            meta=_scrub_tree(sample.meta, scrub),
        )
        return new, counts

    def _find(self, text: str) -> list[Span]:
        spans: list[Span] = []
        # The lowercased copy must keep every offset (a few non-ASCII letters lower to two).
        lower = text.lower()
        if len(lower) != len(text):
            lower = text.translate(_ASCII_LOWER)
        for rule in _RULES:
            if rule.trigger not in lower:
                continue
            for m in rule.pattern.finditer(text):
                value = m.group(rule.group)
                if value and (rule.check is None or rule.check(value)):
                    spans.append((m.start(rule.group), m.end(rule.group), rule.priority, rule.kind))
        _plugin_spans(text, lower, spans)
        _assignment_spans(text, lower, spans)
        if self.redact_emails and "@" in text:
            spans += _emails(text)
        # An e-mail or IP inside a credential is left to the credential rule (no merged spans).
        strong = [s for s in spans if s[2] < _PRIORITY_PII]
        spans = [s for s in spans if s[2] < _PRIORITY_PII or not _overlaps(s, strong)]
        if spans and "[REDACTED:" in text:
            marks = [(m.start(), m.end(), 0, "") for m in MARKER_RE.finditer(text)]
            spans = [s for s in spans if not _overlaps(s, marks)]
        return _everywhere(text, spans)


def _emails(text: str) -> list[Span]:
    out: list[Span] = []
    for m in _EMAIL_DOMAIN_RE.finditer(text):
        start = m.start()
        while start > 0 and text[start - 1] in _EMAIL_LOCAL:
            start -= 1
        while start < m.start() and not text[start].isalnum():
            start += 1
        if start < m.start() and not _EMAIL_KEEP_RE.search(text[start : m.end()]):
            out.append((start, m.end(), _PRIORITY_PII, "email"))
    return out


def _overlaps(span: Span, others: list[Span]) -> bool:
    return any(span[0] < o[1] and o[0] < span[1] for o in others)


def _plugin_spans(text: str, lower: str, spans: list[Span]) -> None:
    starts: list[int] | None = None
    for entry in _PLUGINS:
        if entry.gate and not any(word in lower for word in entry.gate):
            continue
        hits = [m.start() for m in entry.trigger.finditer(lower if entry.lower else text)]
        if not hits:
            continue
        if starts is None:
            starts = [0, *(m.end() for m in re.finditer("\n", text))]
        for i in sorted({bisect.bisect_right(starts, h) - 1 for h in hits}):
            lo = starts[i]
            hi = starts[i + 1] - 1 if i + 1 < len(starts) else len(text)
            line = text[lo:hi]
            for value in set(entry.plugin.analyze_string(line)):
                if entry.entropy_limit is not None and (
                    entry.plugin.calculate_shannon_entropy(value) <= entry.entropy_limit
                ):
                    continue
                for a, b in _locate(line, value) if value else _regex_spans(entry.plugin, line):
                    token = line[a:b]
                    if entry.check is None or entry.check(token, line):
                        spans.append((lo + a, lo + b, entry.priority, entry.kind))


def _locate(line: str, value: str) -> list[tuple[int, int]]:
    """Each occurrence of `value` in `line`, widened to the whole token it sits in."""
    out = []
    pos = line.find(value)
    while pos >= 0:
        a, b = pos, pos + len(value)
        while a > 0 and line[a - 1] in _TOKEN_CHARS and value[0] in _TOKEN_CHARS:
            a -= 1
        while b < len(line) and line[b] in _TOKEN_CHARS and value[-1] in _TOKEN_CHARS:
            b += 1
        out.append((a, b))
        pos = line.find(value, pos + len(value))
    return out


def _regex_spans(plugin: Any, line: str) -> list[tuple[int, int]]:
    """Match spans of a plugin's own regexes, for plugins that report an empty secret value."""
    out = []
    for regex in getattr(plugin, "denylist", ()):
        for m in regex.finditer(line):
            a, b = m.span()
            while a < b and line[a] not in _TOKEN_CHARS:
                a += 1
            while b > a and line[b - 1] not in _TOKEN_CHARS:
                b -= 1
            if b > a:
                out.append((a, b))
    return out


def _assignment_spans(text: str, lower: str, spans: list[Span]) -> None:
    seen: set[int] = set()
    for finder, value_re in ((_KEY_SEP_RE, _ASSIGN_RE), (_FLAG_RE, _FLAG_VALUE_RE)):
        for m in finder.finditer(lower):
            start, end = m.start(), m.end()
            if end in seen:
                continue
            seen.add(end)
            while start > 0 and text[start - 1] in _KEY_CHARS:
                start -= 1
            key = text[start:end].lstrip("-")
            if text.startswith("[REDACTED:", start - 10) or not _key_is_credential(key):
                continue
            v = value_re.match(text, end)
            if v is None:
                continue
            group = next(g for g, val in v.groupdict().items() if val is not None)
            if _plausible_value(v.group(group)):
                spans.append((v.start(group), v.end(group), _PRIORITY_GENERIC, "secret_assignment"))


def _everywhere(text: str, spans: list[Span]) -> list[Span]:
    """Adds every other occurrence of each redacted value (12+ chars, one line) in the text."""
    extra: list[Span] = []
    for value, (_, _, prio, kind) in {text[s[0] : s[1]]: s for s in spans}.items():
        if len(value) < 12 or "\n" in value or "[REDACTED:" in value:
            continue
        pos = text.find(value)
        while pos >= 0:
            extra.append((pos, pos + len(value), prio, kind))
            pos = text.find(value, pos + len(value))
    if not extra:
        return spans
    marks = [m.span() for m in MARKER_RE.finditer(text)]
    return spans + [s for s in extra if not any(s[0] < b and a < s[1] for a, b in marks)]


def _apply(text: str, spans: list[Span], counts: Counter[str]) -> str:
    """Merges overlapping spans (the most specific rule names the kind) and replaces them."""
    spans.sort()
    parts: list[str] = []
    last = 0
    cur_start, cur_end, cur_key = spans[0][0], spans[0][1], (spans[0][2], spans[0][0], spans[0][3])
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


_KEEP_KEYS = frozenset({"role", "id", "tool_call_id", "type"})


def _scrub_tree(obj: Any, scrub: Callable[[str], str], key: str = "") -> Any:
    """Scrubs every string in nested dicts/lists; JSON-encoded `arguments` are scrubbed decoded."""
    if isinstance(obj, str):
        if key == "arguments" and obj[:1] in "{[":
            try:
                decoded = json.loads(obj)
            except ValueError:
                return scrub(obj)
            cleaned = _scrub_tree(decoded, scrub)
            return obj if cleaned == decoded else json.dumps(cleaned, ensure_ascii=False)
        return scrub(obj)
    if isinstance(obj, dict):
        return {k: v if k in _KEEP_KEYS else _scrub_tree(v, scrub, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub_tree(v, scrub) for v in obj]
    return obj
