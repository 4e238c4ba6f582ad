"""The scrubber's rule tables: which credentials and personal data `sam_brain.pipeline.scrub` looks for.

Three kinds of rules, each with its false-positive filters: detect-secrets' (Yelp) plugin classes,
each behind a cheap trigger regex and a lowercase gate (`PLUGINS`); our own regex rules for what
detect-secrets misses or matches too narrowly (`RULES`: PEM blocks, URL and curl credentials, auth
headers, vendor token formats); and the `.env`/YAML/JSON/CLI-flag assignment and e-mail patterns.
Every rule carries a priority (`VENDOR` < `STRUCT` < `GENERIC` < `PII`); the lowest names a merged
redaction. docs/scrubbing.md lists every rule and where it comes from.
"""

from __future__ import annotations

import ipaddress
import math
import re
import string
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.filters import heuristic

VENDOR, STRUCT, GENERIC, PII = 0, 1, 2, 3  # rule priority: the lowest names a merged redaction
Span = tuple[int, int, int, str]  # start, end, priority, kind

_STOPWORDS = (
    "your insert placeholder changeme change_me example dummy redacted replace here todo fixme"
)
# Values with these prefixes belong to a vendor rule; generic rules defer to its verdict.
_VENDOR_PREFIX = re.compile(
    r"(?:xox[a-z]|xapp|gh[pousr]|github_pat|pplx|hf|sk|[rs]k_(?:live|test))[-_]|AIza"
)


def _entropy(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def _is_placeholder(value: str) -> bool:
    low = value.lower()
    body = re.sub(r"^[a-z]{2,10}[-_]", "", low)
    if len(set(body)) <= 3 or re.search(r"x{5,}|\*{3,}|\.\.\.|…", low):
        return True
    return any(word in low for word in _STOPWORDS.split())


def _is_templated(value: str) -> bool:
    return value[:1] in "${<%@#" or value[-1:] in "}>)" or "{{" in value or "${" in value


def plausible_value(value: str) -> bool:
    """Our filter for assignment-style hits: drops references, placeholders and plain words.

    Args:
        value: The assigned value, without quotes.

    Returns:
        True when the value could be a real credential.
    """
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
    # A single-case word or identifier (PASSWORD, insert_key_here) is not a secret.
    return has_digit or has_symbol or (mixed and _entropy(value) >= 3.5)


_ID_PREFIX = re.compile(
    r"(?:toolu|srvtoolu|msg|req|call|chatcmpl|run|file|batch|agent|acompact|bash)[_-]"
)
# Claude Code's own ids: 2.1.114 agent ids ("a" + 16 hex, named in "to: '<id>'" hints; a hex-encoded
# secret has an even length), and session/message UUIDs (detect-secrets drops those already).
_AGENT_ID = re.compile(r"a[0-9a-f]{16}")
# Base64 of a file's magic number (PNG, JPEG, GIF, WebP, PDF, gzip, zip), of an SSH public key,
# or of a DER public key (EC P-256, RSA 2048, Ed25519 SubjectPublicKeyInfo).
_FILE_B64 = ("iVBORw0KGgo", "/9j/", "R0lGOD", "UklGR", "JVBERi", "H4sI", "UEsDB", "AAAA",
             "MFkwEwYHKoZIzj0CAQY", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8A", "MCowBQYDK2VwAyEA")  # fmt: skip
_SRI = re.compile(r"sha(?:1|256|384|512)-[A-Za-z0-9+/]{27,}={0,2}$")  # lockfile integrity digests
_ID_KEY = re.compile(r"(?i)id[\"']?\s*[:=]\s*[\"']$")
_DS_FILTERS = (heuristic.is_sequential_string, heuristic.is_potential_uuid,  # default filters
               heuristic.is_templated_secret, heuristic.is_prefixed_with_dollar_sign,
               heuristic.is_not_alphanumeric_string)  # fmt: skip


def is_public_id(value: str) -> bool:
    """An API object id (toolu_..., msg_...), a Claude Code agent id, an SRI digest or an embedded
    file's base64 (a PNG's, a public key's): public, whatever rule looks at it."""
    if _ID_PREFIX.match(value) or _AGENT_ID.fullmatch(value) or _SRI.match(value):
        return True
    return value.startswith(_FILE_B64)


def _generic_ok(value: str, line: str) -> bool:
    """detect-secrets' own heuristic filters plus ours, for keyword and high-entropy hits."""
    if any(f(value) for f in _DS_FILTERS) or heuristic.is_likely_id_string(value, line):
        return False
    at = max(line.find(value), 0)
    if is_public_id(value) or _ID_KEY.search(line, max(at - 40, 0), at):
        return False  # API object ids (toolu_..., "requestId": ...) are public identifiers
    if heuristic.is_indirect_reference(line) or _is_placeholder(value) or _is_templated(value):
        return False
    return not (_VENDOR_PREFIX.match(value) or re.search(r"\s|^[A-Z_]+$|^[a-z_]+$", value))


def _hex_ok(value: str, line: str) -> bool:
    # A quoted 40/64-char single-case hex string is a git object id or a sha256 digest.
    if len(value) in (40, 64) and (value == value.lower() or value == value.upper()):
        return False
    return _generic_ok(value, line)


def _public_ip_ok(value: str, line: str) -> bool:
    found = re.search(r"\d{1,3}(?:\.\d{1,3}){3}", value)
    try:
        ip = ipaddress.ip_address(found.group() if found else value)
    except ValueError:
        return True  # detect-secrets called it a public IP and we cannot tell otherwise
    return bool(ip.is_global) and not ip.is_multicast  # drops 169.254/16, 100.64/10, TEST-NETs


def _not_placeholder(value: str, line: str = "") -> bool:
    return not _is_placeholder(value)


def _slack_ok(value: str) -> bool:
    groups = re.findall(r"-(\d+)(?=-)", value)
    if groups and len(groups[0]) == 1:
        groups = groups[1:]  # a leading one-digit version (xoxa-2-...)
    return bool(groups) and all(len(g) >= 8 for g in groups)


@dataclass(frozen=True)
class Plugin:
    kind: str
    plugin: Any
    trigger: re.Pattern[str]  # finds candidate lines; runs on the lowercased text if `gate`
    gate: tuple[str, ...]  # lowercase literals, one of which must occur before `trigger` runs
    check: Callable[[str, str], bool] | None
    priority: int


# kind, detect-secrets class, trigger, gate. Each trigger is a necessary condition of the plugin's
# own regexes (checked against its source), literal-led where possible: re scans those fastest.
# SlackDetector and PrivateKeyDetector are replaced by our rules below (see docs/scrubbing.md).
# fmt: off
_DS_TABLE = (
    ("artifactory_token", "ArtifactoryDetector", r"AKC|AP[\dA-F]", ""),
    ("aws_key", "AWSKeyDetector", r"a(?:3t|bia|cca|kia|sia|ws)", "a3t abia acca akia asia aws"),
    ("azure_storage_key", "AzureStorageKeyDetector", r"AccountKey=", ""),
    ("basic_auth", "BasicAuthDetector", r"://", ""),
    ("cloudant", "CloudantDetector",
     r"cl(?:oudant|ou)?[-_]?(?:api)?(?:key|pw|pass|token)|\.cloudant\.com", "cl"),
    ("discord_bot_token", "DiscordBotTokenDetector", r"\.[\w-]{6}\.[\w-]{27}", ""),
    ("github_token", "GitHubTokenDetector", r"gh[pousr]_", ""),
    ("gitlab_token", "GitLabTokenDetector",
     r"gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-|gr1348941", "gl gr1348941"),
    ("ibm_cloud_iam", "IbmCloudIamDetector",
     r"(?:key|pwd|pass(?:word)?|token)[ \"'\]=:>]*[\w-]{44}", "key pwd pass token"),
    ("ibm_cos_hmac", "IbmCosHmacDetector", r"secret[-_]?(?:access)?[-_]?key", "secret"),
    ("public_ip", "IPPublicDetector", r"\.\d{1,3}\.\d{1,3}\.\d", ""),
    ("jwt", "JwtTokenDetector", r"eyJ", ""),
    ("mailchimp_key", "MailchimpDetector", r"-us\d", ""),
    ("npm_token", "NpmDetector", r"_authToken=", ""),
    ("openai_api_key", "OpenAIDetector", r"T3BlbkFJ", ""),
    ("pypi_token", "PypiTokenDetector", r"pypi-AgE", ""),
    ("sendgrid_key", "SendGridDetector", r"SG\.", ""),
    ("softlayer", "SoftlayerDetector",
     r"softlayer|sl[-_]?(?:api)?[-_]?(?:key|pwd|pass|token)", "sl softlayer"),
    ("square_oauth", "SquareOAuthDetector", r"sq0csp-", ""),
    ("stripe_key", "StripeDetector", r"k_live_", ""),
    ("telegram_bot_token", "TelegramBotTokenDetector", r":(?<=\d:)[\w-]{35}", ""),
    ("twilio_key", "TwilioKeyDetector", r"(?:AC|SK)[a-z0-9]{32}", ""),
    ("secret_keyword", "KeywordDetector",
     r"(?:api|auth|service|account|db|database|priv|private|client)_?key|db_?pass"
     r"|database_?pass|key_?pass|password|passwd|pwd|secret|contrase",
     "key pass pwd secret contrase"),
    ("high_entropy_base64", "Base64HighEntropyString", r"['\"][\w+/=-]{23,}['\"]", ""),
    ("high_entropy_hex", "HexHighEntropyString", r"['\"][0-9a-fA-F]{9,}['\"]", ""),
)
_DS_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "github_token": _not_placeholder, "public_ip": _public_ip_ok, "secret_keyword": _generic_ok,
    "high_entropy_base64": _generic_ok, "high_entropy_hex": _hex_ok}
_DS_PRIORITY = {"basic_auth": STRUCT, "public_ip": PII, "secret_keyword": GENERIC,
                "high_entropy_base64": GENERIC, "high_entropy_hex": GENERIC}
# fmt: on
_DS_MAPPING: dict[str, Any] = get_mapping_from_secret_type_to_class()  # secret type -> class
_DS_CLASSES = {cls.__name__: cls for cls in _DS_MAPPING.values()}
PLUGINS = tuple(
    Plugin(kind, _DS_CLASSES[name](), re.compile(trigger), tuple(gate.split()),
            _DS_CHECKS.get(kind), _DS_PRIORITY.get(kind, VENDOR))
    for kind, name, trigger, gate in _DS_TABLE
)  # fmt: skip


@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: re.Pattern[str]
    trigger: str  # a lowercase literal that must occur in the lowercased text
    group: int = 0
    check: Callable[[str], bool] | None = None
    priority: int = VENDOR


def _mixed_letters(value: str) -> bool:
    return any(c.isupper() for c in value) and _entropy(value) >= 3.5


def _url_ok(userinfo: str) -> bool:
    password = userinfo.split(":", 1)[1]
    return not (_is_templated(password) or _is_placeholder(password))


_B, _E = r"(?<![\w-])", r"(?![\w-])"  # token boundaries: not inside a longer word
# A PEM block up to its END line; cut short (truncated tool output), up to its last body line.
_PEM = (
    r"-{4,5} ?BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY(?: BLOCK)? ?-{4,5}"
    r"(?:(?s:.{0,16384}?)-{4,5} ?END \1PRIVATE KEY(?: BLOCK)? ?-{4,5}"
    r"|(?:(?:\r?\n|\\(?:r\\)?n)(?:[A-Za-z0-9+/=]+|[\w-]+: [^\r\n\\]*)?(?![^\r\n\\]))*)"
)
# Bounded, and never past the next `curl`: a long line of many curls stays linear.
_CURL = r"\bcurl\b(?:(?!curl\b)(?:\\\r?\n|[^\n])){0,4000}?\s(?:-u|--user)(?:\s+|=)((?:\"[^\"\n]*\"|'[^'\n]*'|[^\s\"'])+)"
_MYSQL = r"\bmysql(?:dump|admin)?\b(?:(?!mysql)[^\n]){0,4000}?\s-p('[^'\n]+'|\"[^\"\n]+\"|[^\s'\"-]\S*)"  # fmt: skip
_HEADER = (
    r"(?:-H|--header)\s*=?\s*([\"'])\s*[\w-]*(?i:auth|token|key|secret|passw)[\w-]*\s*:\s*"
    r"(?i:(?:bearer|basic|token|api-token|apikey|digest)\s+)?([^\"'\s]+)"
)
_AUTHORIZATION = (
    r"(?i:\bauthorization[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token|digest)\s+)?)"
    r"([^\s\"'<>{}]+)"
)
_FACEBOOK = r"\|(?:(?<=(?<!\d)\d{15}\|)|(?<=(?<!\d)\d{16}\|))([\w-]{27})" + _E  # app-id|secret

# fmt: off
_RULE_TABLE: tuple[tuple[Any, ...], ...] = (
    # kind, pattern, trigger (lowercase literal), group, check, priority
    # Structural rules: whole key blocks, credentials in URLs, command lines and headers.
    ("private_key", _PEM, "private key", 0, None, STRUCT),
    ("private_key", r"PuTTY-User-Key-File-\d:(?s:.*?)(?:Private-MAC: ?[0-9a-fA-F]+|\Z)",
     "putty-user-key", 0, None, STRUCT),
    ("url_credentials", r"://([^\s:/?#\[\]@\"'<>{}]*:[^\s/?#\[\]@\"'<>]+)@", "://", 1, _url_ok,
     STRUCT),
    ("curl_credentials", _CURL, "curl", 1, lambda v: ":" in v and v.lstrip("\"'")[:1] != "$",
     STRUCT),
    ("mysql_password", _MYSQL, "mysql", 1, lambda v: not _is_templated(v.strip("'\"")), STRUCT),
    ("auth_header", _HEADER, "-", 2, lambda v: not _is_templated(v), STRUCT),
    ("auth_header", _AUTHORIZATION, "authorization", 1,
     lambda v: v.lower() not in ("bearer", "basic", "token", "digest") and plausible_value(v),
     STRUCT),
    ("slack_webhook", r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[\w+/-]+",
     "hooks.slack.com"),
    # Vendor token formats that detect-secrets lacks or matches too narrowly.
    ("anthropic_api_key", _B + r"sk-ant-[a-z]+\d\d-[A-Za-z0-9_-]{20,}", "sk-ant-"),
    ("openai_api_key", _B + r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}", "sk-", 0,
     lambda v: any(c.isdigit() for c in v) and not _is_placeholder(v)),
    ("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}" + _E, "aiza"),
    ("huggingface_token", _B + r"hf_[A-Za-z]{34}(?![A-Za-z0-9_])", "hf_", 0, _mixed_letters),
    ("huggingface_token", _B + r"api_org_[A-Za-z]{34}(?![A-Za-z0-9_])", "api_org_", 0, _mixed_letters),
    ("github_token", _B + r"github_pat_[A-Za-z0-9_]{22,255}", "github_pat_", 0, _not_placeholder),
    # GitLabTokenDetector reports an empty value for CI build tokens (glcbt-): we match them.
    ("gitlab_token", _B + r"glcbt-(?:[0-9a-fA-F]{2}_)?[A-Za-z0-9_-]{20,50}(?!\w)", "glcbt-"),
    ("slack_token", _B + r"xox[abposr]-(?:\d+-)+[A-Za-z0-9-]+", "xox", 0, _slack_ok),
    ("slack_token", _B + r"(?:xoxe\.xox[bp]-|xoxe-)\d-[A-Za-z0-9]{100,}", "xoxe"),
    ("slack_token", _B + r"xapp-\d-[A-Z0-9]+-\d+-[a-z0-9]+", "xapp-"),
    ("age_secret_key", r"AGE-SECRET-KEY-1[0-9A-Z]{58}", "age-secret-key-1"),
    ("atlassian_token", _B + r"ATATT3[A-Za-z0-9_=-]{150,}", "atatt3"),
    ("aws_bedrock_key", _B + r"ABSK[A-Za-z0-9+/]{100,}={0,2}", "absk"),
    ("aws_bedrock_key", _B + r"bedrock-api-key-[A-Za-z0-9+/=]{20,}", "bedrock-api-key-"),
    ("notion_token", _B + r"ntn_[A-Za-z0-9]{40,50}" + _E, "ntn_"),
    ("onepassword_token", _B + r"ops_eyJ[A-Za-z0-9+/_=-]{50,}", "ops_eyj"),
    ("vault_token", _B + r"hvs\.[A-Za-z0-9_-]{90,}", "hvs."),
    ("vault_token", r"s\.(?<![\w.]s\.)[A-Za-z0-9]{24}(?![\w.])", "s.", 0,
     lambda v: sum(c.isdigit() for c in v) >= 2 and plausible_value(v[2:])),
    ("intra42_secret", r"\bs-s4t2(?:ud|af)-[a-f0-9]{64}\b", "s-s4t2"),
    ("octopus_api_key", r"\bAPI-[A-Z0-9]{26}\b", "api-"),
    ("perplexity_api_key", _B + r"pplx-[A-Za-z0-9]{48}", "pplx-", 0, _not_placeholder),
    ("sourcegraph_token", _B + r"sgp_(?:[a-fA-F0-9]{16}_|local_)?[a-fA-F0-9]{40}" + _E, "sgp_"),
    ("sourcegraph_token", r"(?i:sourcegraph[\w-]*[\"']?\s*[:=]\s*[\"']?)([a-fA-F0-9]{40})" + _E,
     "sourcegraph", 1),
    ("azure_client_secret", r"(?<![\w~.-])[\w~.-]{3}\dQ~[\w~.-]{31,34}(?![\w~.-])", "q~"),
    ("facebook_token", _FACEBOOK, "|", 1),
    ("facebook_token", _B + r"EAA[A-Z][A-Za-z0-9]{60,}", "eaa"),
    ("cloudflare_ca_key", r"\bv1\.0-[a-f0-9]{24}-[a-f0-9]{146}\b", "v1.0-"),
    ("npm_token", _B + r"npm_[A-Za-z0-9]{36}" + _E, "npm_", 0, _not_placeholder),
    ("digitalocean_token", _B + r"do[por]_v1_[a-f0-9]{64}" + _E, "_v1_"),
    ("shopify_token", _B + r"shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}" + _E, "shp"),
    ("linear_api_key", _B + r"lin_api_[A-Za-z0-9]{40}" + _E, "lin_api_"),
    ("postman_api_key", _B + r"PMAK-[a-f0-9]{24}-[a-f0-9]{34}" + _E, "pmak-"),
    ("stripe_key", _B + r"[rs]k_test_[0-9a-zA-Z]{24,}" + _E, "k_test_", 0, _not_placeholder),
)
# fmt: on

# Personal data in command output. Owner and group of `ls -l` lines (system accounts kept), and the
# names on git's person lines (`Author: Name <mail>`); bots, Claude and no-reply addresses are kept.
# fmt: off
_SYSTEM_ACCOUNTS = frozenset({
    "root", "wheel", "staff", "admin", "nobody", "nogroup", "daemon", "bin", "sys", "adm", "users",
    "user", "docker", "sudo", "www-data", "_www", "everyone", "syslog", "messagebus",
    "systemd-journal", "polkitd", "postgres", "mysql", "redis", "nginx", "git", "ubuntu",
})
# fmt: on
_LS_LONG = (
    r"(?m)^[-dlcbpsD][-r][-w][-xsS][-r][-w][-xsS][-r][-w][-xtT][@+.]?[ \t]+\d+[ \t]+"
    r"(\S+)[ \t]+(\S+)[ \t]+\d"
)
_PERSON = r"(?im)^[ \t]*(?:{})[ \t]*:[ \t]*([^<>\n]*[^<>\s])[ \t]*<(?![^<>\n]*no-?reply)[^<>\n]*>"
_BOT_NAME = re.compile(r"(?i)claude\b|.*\[bot\]|github\b|dependabot|renovate|copilot")


def _account_ok(name: str) -> bool:
    return name not in _SYSTEM_ACCOUNTS and not name.isdigit() and name != "[REDACTED:username]"


def _person_ok(name: str) -> bool:
    return not (_BOT_NAME.match(name) or name.startswith("[REDACTED"))


_PII_TABLE: tuple[tuple[Any, ...], ...] = (
    # An ls -l line can start any text: no literal narrows it (the scan runs at ~60 MB/s).
    ("username", _LS_LONG, "", 1, _account_ok, PII),
    ("username", _LS_LONG, "", 2, _account_ok, PII),
    ("person_name", _PERSON.format("author|co-authored-by"), "author", 1, _person_ok, PII),
    ("person_name", _PERSON.format("commit"), "commit", 1, _person_ok, PII),
    ("person_name", _PERSON.format("(?:signed-off|reviewed|acked|tested|reported)-by"), "-by", 1,
     _person_ok, PII),
)  # fmt: skip
RULES = tuple(
    Rule(kind, re.compile(pattern), *rest) for kind, pattern, *rest in _RULE_TABLE + _PII_TABLE
)


# `.env` / YAML / JSON / CLI-flag assignments whose key names a credential (key_is_credential);
# the key finders run on the lowercased text, the value patterns on the original.
_KEY_WORDS = r"(?:token|secret|pass|pw|key|credential|auth)[\w.-]*"
KEY_SEP_RE = re.compile(_KEY_WORDS + r"(?=[\"'\]]?[ \t]*(?::=|=>|=(?!=)|:))")
FLAG_RE = re.compile(r"--[\w.-]*" + _KEY_WORDS + r"(?=[ \t])")
KEY_CHARS = frozenset(string.ascii_letters + string.digits + "_.-")
ASSIGN_RE = re.compile(
    r"(?:[\"'\]][ \t]*(?::=|=>|=(?!=)|:)|[ \t]*(?::=|=>|=(?!=)|:(?=[ \t])))[ \t]*@?"
    r"(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|`(?P<bq>[^`\n]*)`|(?P<bare>[^\s\"'`,;)}\]]+))"
)
FLAG_VALUE_RE = re.compile(
    r"[ \t]+(?:\"(?P<dq>[^\"\n]*)\"|'(?P<sq>[^'\n]*)'|(?P<bare>[^\s\"'`;|&]+))"
)
# fmt: off
_CRED_WORDS = frozenset({"token", "secret", "password", "passwd", "passphrase", "pwd", "pw", "pass",
                         "apikey", "credential", "credentials", "auth"})
_KEY_QUALIFIERS = frozenset({"api", "access", "secret", "private", "auth", "client", "master",
                             "account", "service", "signing", "encryption", "license", "app",
                             "admin", "db", "database", "priv", "subscription", "consumer",
                             "webhook", "session"})
# fmt: on


def key_is_credential(key: str) -> bool:
    """Whether an assignment's key names a credential (`API_KEY`, `dbPassword`, not `keyboard`).

    Args:
        key: The key as written (any case convention, leading `--` removed).

    Returns:
        True when the key's last word is a credential word or a qualified `key`.
    """
    words = [w.lower() for w in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", key)]
    while words and words[-1].isdigit():
        words.pop()
    if not words:
        return False
    last = words[-1]
    if last in _CRED_WORDS or last.endswith(("token", "secret", "password", "passwd")):
        return True  # also PGPASSWORD, authtoken
    if last.endswith("key") and last[:-3] in _KEY_QUALIFIERS:  # apikey, secretkey
        return True
    return last == "key" and len(words) > 1 and words[-2] in _KEY_QUALIFIERS


# Literal-led patterns (`@`, `/`): the local part of an address is widened by hand in scrub._emails.
EMAIL_DOMAIN_RE = re.compile(r"@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
EMAIL_LOCAL = frozenset(string.ascii_letters + string.digits + "._%+-")
EMAIL_KEEP_RE = re.compile(
    r"(?i)^(?:git|noreply|no-reply)@|@(?:[\w-]+\.)*(?:example\.(?:com|org|net)|test|invalid"
    r"|localhost)$|\.(?:png|jpe?g|gif|svg|webp|ico|js|ts|py|css|html|json|md|txt|lock)$"
)
