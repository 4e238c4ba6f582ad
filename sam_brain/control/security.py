"""The API's defences, checked before any handler runs (docs/operations.md has the threat model).

A web page the user visits can send requests to 127.0.0.1 (CORS "simple" POSTs need no
preflight) and, through DNS rebinding, even read the answers. So, in this order:

1. `Host` must name this server: localhost, 127.0.0.1, [::1], the bind address or one of
   `api.allowed_hosts`, with the port the request arrived on; otherwise 421 (rebinding).
2. A browser's cross-site marks are refused with 403: an `Origin` other than this server's own,
   `Sec-Fetch-Site: cross-site` or `same-site` (another port of localhost is same-site).
3. The bearer token (`<data>/api.token`) is required on every mutating request, and on every
   request when bound off-loopback; /v1/* (chat) needs it, or a chat key, only off-loopback, so
   local tools keep working without one (`/v1/feedback`, which changes training data, always
   needs one of them). 401 otherwise.
4. Mutating requests must be `Content-Type: application/json` (415): a page cannot send that
   cross-origin without a preflight, which this server never grants.

Tokens are compared in constant time. `check_json` bounds what /api bodies may contain.
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from sam_brain.config import ApiConfig
from sam_brain.control.apitoken import (
    WILDCARD_BINDS,
    ensure_token,
    is_loopback,
    read_secret_lines,
)
from sam_brain.errors import BadRequest, ConfigError

log = logging.getLogger(__name__)

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# /v1 routes that change training data: a bearer (token or chat key) even on loopback.
TOKEN_ROUTES = frozenset({"/v1/feedback"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
CROSS_SITE = frozenset({"cross-site", "same-site"})
_PORT = re.compile(r"[0-9]{1,5}")
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")  # NUL and lone surrogates ("\ud800" in JSON)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Policy:
    """Who may call: the token, the accepted Host names and whether the bind is off-loopback."""

    token: str
    port: int
    remote: bool
    names: frozenset[str]
    any_host: bool = False
    chat_keys: tuple[str, ...] = ()


def make_policy(api: ApiConfig, data: Path, bind_host: str, port: int) -> Policy:
    """The policy of a daemon bound to `bind_host`; creates the token at first start.

    Raises:
        ConfigError: The token or chat-keys file is unusable; the message says which and why
            (a daemon refuses to start rather than serve without a usable token).
    """
    try:
        token = ensure_token(data)
    except OSError as err:
        raise ConfigError(str(data), [f"cannot create the API token ({err.strerror})"]) from err
    extra = {h.strip().strip("[]").lower() for h in api.allowed_hosts if h.strip()}
    names = set(LOOPBACK_NAMES) | (extra - {"*"})
    if bind_host not in WILDCARD_BINDS:
        names.add(bind_host.strip("[]").lower())
    keys: tuple[str, ...] = ()
    if api.chat_keys_file:
        keys = tuple(read_secret_lines(Path(api.chat_keys_file).expanduser()))
    return Policy(
        token=token,
        port=port,
        remote=not is_loopback(bind_host),
        names=frozenset(names),
        any_host="*" in extra,
        chat_keys=keys,
    )


def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` as (lowercase name, port); None when malformed."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1 :]
    else:
        name, sep, port = value.partition(":")
        rest = ":" + port if sep else ""
    if not name:
        return None
    if not rest:
        return name, None
    if rest[0] != ":" or not _PORT.fullmatch(rest[1:]):
        return None
    return name, int(rest[1:])


def _local_port(request: web.Request, fallback: int) -> int:
    sock = request.transport.get_extra_info("sockname") if request.transport else None
    return int(sock[1]) if isinstance(sock, tuple) and len(sock) >= 2 else fallback


def host_ok(policy: Policy, host: str | None, port: int) -> bool:
    parsed = split_host(host) if host else None
    if parsed is None:
        return False
    name, given = parsed
    if given is None:
        given = 80  # a browser leaves out only the scheme's default port
    return given == port and (policy.any_host or name in policy.names)


def origin_ok(policy: Policy, origin: str, port: int) -> bool:
    try:
        parts = urlsplit(origin.strip())
        given = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and (parts.hostname or "") in policy.names
        and given == port
        and parts.path in ("", "/")
    )


def _bearer(request: web.Request) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def token_ok(given: str, accepted: tuple[str, ...]) -> bool:
    """Constant-time comparison against every accepted key (no early exit on a match)."""
    if not given:
        return False
    found = False
    for key in accepted:
        found |= hmac.compare_digest(given.encode(errors="replace"), key.encode(errors="replace"))
    return found


def _refuse(request: web.Request, status: int, message: str) -> web.Response:
    log.info("refused %s %s: %s", request.method, request.path, message)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if request.path.startswith("/v1/"):  # the OpenAI error shape chat clients expect
        body: dict[str, Any] = {"error": {"message": message, "type": "forbidden", "code": status}}
    else:
        body = {"error": message}
    return web.json_response(body, status=status, headers=headers)


def check_request(policy: Policy, request: web.Request) -> tuple[int, str] | None:
    """Why `request` is refused (status, message), or None when it may reach its handler."""
    port = _local_port(request, policy.port)
    if not host_ok(policy, request.headers.get("Host"), port):
        return 421, "this server does not answer to that Host name"
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() in CROSS_SITE:
        return 403, "cross-site requests are refused"
    origin = request.headers.get("Origin")
    if origin is not None and not origin_ok(policy, origin, port):
        return 403, "requests from another origin are refused"
    mutating = request.method in MUTATING
    # By the matched route, not the raw path: no spelling of a path reaches /api as "chat".
    resource = request.match_info.route.resource
    chat = resource is not None and resource.canonical.startswith("/v1/")
    keyed = resource is not None and resource.canonical in TOKEN_ROUTES
    if policy.remote or (mutating and (keyed or not chat)):
        accepted = (policy.token, *policy.chat_keys) if chat else (policy.token,)
        if not token_ok(_bearer(request), accepted):
            return (
                401,
                "a valid 'Authorization: Bearer <token>' header is required (see docs/operations.md)",
            )
    if mutating and request.content_type != "application/json":
        return 415, "send the body as Content-Type: application/json"
    return None


def security_middleware(policy: Policy) -> Middleware:
    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = check_request(policy, request)
        if refused is not None:
            return _refuse(request, *refused)
        return await handler(request)

    return guard


def check_json(value: Any, max_depth: int = 32) -> None:
    """Refuse JSON nested deeper than `max_depth` or holding NUL or lone surrogates (400)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _BAD_CHARS.search(item):
                raise BadRequest("strings in the body must not contain NUL or lone surrogates")
            continue
        if not isinstance(item, (dict, list)):
            continue
        if depth > max_depth:
            raise BadRequest(f"the body is nested deeper than {max_depth} levels")
        if isinstance(item, dict):
            stack.extend((k, depth) for k in item)
            stack.extend((v, depth + 1) for v in item.values())
        else:
            stack.extend((v, depth + 1) for v in item)
