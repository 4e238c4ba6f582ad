"""Validate an OpenAI `/v1/chat/completions` request body into a `ChatRequest`.

Everything a client can get wrong is refused here, before the model is touched, with a
`BadRequest` naming the field (the server answers 4xx and never counts it against a version):
bodies over the size limit (413), bytes that are not UTF-8 JSON, nesting deeper than `MAX_DEPTH`,
NUL characters and lone surrogates anywhere in the body (rejected, not cleaned: silently changing
a prompt would give a different answer than the client asked for), unknown roles, malformed
content parts and `tool_calls` (each call an object whose `function` has a string `name` and
`arguments` that are a JSON object or a string of one, as the chat template needs), and strings
or lists over their bounds. Unknown OpenAI fields are ignored; fields we cannot honour (`n` > 1,
`stop` sequences, non-text content parts) are refused. Requests without a conversation id are
keyed by their first user message, which keeps canary routing sticky per conversation.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sam_brain.errors import BadRequest
from sam_brain.protocols import Message

ROLES = ("system", "user", "assistant", "tool")
MAX_DEPTH = 32  # OpenAI bodies nest about 6 deep; tool arguments get the rest
MAX_MESSAGES = 2048
MAX_TOOL_CALLS = 128
MAX_NAME_CHARS = 256  # model, user, conversation id, tool names and ids
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


class BodyTooLarge(BadRequest):
    """The request body is over the server's size limit."""

    http_status = 413


@dataclass
class ChatRequest:
    """A validated `/v1/chat/completions` body (`prompt`: its token ids, once counted)."""

    messages: list[Message]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stream: bool = False
    model: str | None = None
    conversation_key: str = ""
    prompt: list[int] | None = None


def decode_body(raw: bytes) -> Any:
    """The JSON document in `raw`, refused when it is not UTF-8 JSON, too deep or has bad characters.

    Raises:
        BadRequest: Naming the problem (and the field, for characters).
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadRequest(f"request body is not UTF-8: {err}") from err
    try:
        body = json.loads(text)
    except RecursionError:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, and integers over Python's digit limit
        raise BadRequest(f"request body is not valid JSON: {err}") from err
    check_tree(body, "body")
    return body


def check_tree(value: Any, where: str, depth: int = 0) -> None:
    """Refuse nesting deeper than `MAX_DEPTH` and NUL or lone surrogates in any string or key.

    Iterative, so a deep document cannot exhaust the stack here either.
    """
    stack: list[tuple[Any, str, int]] = [(value, where, depth)]
    while stack:
        item, path, level = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
            continue
        if not isinstance(item, (dict, list)):
            continue
        if level >= MAX_DEPTH:
            raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels (at {path})")
        if isinstance(item, dict):
            for key, child in item.items():
                _check_text(key, f"a key of {path}")
                stack.append((child, f"{path}.{key}"[:200], level + 1))
        else:
            stack.extend((child, f"{path}[{i}]", level + 1) for i, child in enumerate(item))


def _check_text(text: str, where: str) -> None:
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        what = "a NUL character" if bad.group() == "\x00" else "a lone surrogate"
        code = f"\\u{ord(bad.group()):04x}"
        raise BadRequest(f"{where} contains {what} ({code} at offset {bad.start()})")


def parse_request(
    body: Any, max_tokens_limit: int = 4096, default_max_tokens: int = 256
) -> ChatRequest:
    """Validate an OpenAI chat body; unknown OpenAI fields are ignored, unsupported ones refused.

    Raises:
        BadRequest: With a message naming the offending field.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    if len(raw) > MAX_MESSAGES:
        raise BadRequest(f"'messages' has {len(raw)} entries; at most {MAX_MESSAGES} are accepted")
    messages = [_message(i, m) for i, m in enumerate(raw)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    if max_tokens is None:
        max_tokens = default_max_tokens
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("'max_tokens' must be an integer")
    if not 1 <= max_tokens <= max_tokens_limit:
        raise BadRequest(f"'max_tokens' must be within 1..{max_tokens_limit}")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    if body.get("n", 1) not in (1, None) or isinstance(body.get("n"), bool):
        raise BadRequest("'n' must be 1: one choice per request")
    if body.get("stop") not in (None, "", []):
        raise BadRequest("'stop' sequences are not supported")
    model = _name(body.get("model"), "'model'")
    key = _name(body.get("conversation_id"), "'conversation_id'") or _name(
        body.get("user"), "'user'"
    )
    if not key:  # no id: the first user message identifies the conversation
        first = next((m for m in messages if m["role"] == "user"), messages[0])
        key = json.dumps(first.get("content"))
    return ChatRequest(messages, max_tokens, temperature, top_p, stream, model, key)


def _name(value: Any, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a string")
    if len(value) > MAX_NAME_CHARS:
        raise BadRequest(f"{what} is {len(value)} characters; at most {MAX_NAME_CHARS}")
    return value


def _message(i: int, m: Any) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise BadRequest(f"{where} must be an object with a role in {', '.join(ROLES)}")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: only text is understood
        for j, p in enumerate(content):
            if not (isinstance(p, dict) and p.get("type") == "text"):
                raise BadRequest(f"{where}.content[{j}]: only text parts are supported")
            if not isinstance(p.get("text"), str):
                raise BadRequest(f"{where}.content[{j}].text must be a string")
        content = "".join(p["text"] for p in content)
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"{where}.content must be a string, a list of text parts or null")
    out: Message = {"role": m["role"], "content": content or ""}
    for extra in ("tool_call_id", "name"):
        value = _name(m.get(extra), f"{where}.{extra}")
        if value is not None:
            out[extra] = value
    calls = m.get("tool_calls")
    if calls is not None and calls != []:
        if m["role"] != "assistant":
            raise BadRequest(f"{where}.tool_calls: only assistant messages make tool calls")
        if not isinstance(calls, list):
            raise BadRequest(f"{where}.tool_calls must be a list of tool calls")
        if len(calls) > MAX_TOOL_CALLS:
            raise BadRequest(f"{where}.tool_calls has {len(calls)} calls; at most {MAX_TOOL_CALLS}")
        out["tool_calls"] = [_tool_call(f"{where}.tool_calls[{j}]", c) for j, c in enumerate(calls)]
    return out


def _tool_call(where: str, call: Any) -> dict[str, Any]:
    """One OpenAI tool call, checked into the shape the chat template renders."""
    if not isinstance(call, dict):
        raise BadRequest(f"{where} must be an object")
    if call.get("type", "function") != "function":
        raise BadRequest(f"{where}.type must be 'function'")
    fn = call.get("function")
    if not isinstance(fn, dict):
        raise BadRequest(f"{where}.function must be an object with a name and arguments")
    name = _name(fn.get("name"), f"{where}.function.name")
    if not name:
        raise BadRequest(f"{where}.function.name must be a non-empty string")
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except RecursionError:
            raise BadRequest(f"{where}.function.arguments nest too deeply") from None
        except ValueError as err:
            raise BadRequest(f"{where}.function.arguments is not valid JSON: {err}") from err
        check_tree(args, f"{where}.function.arguments", depth=4)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise BadRequest(f"{where}.function.arguments must be a JSON object (or a string of one)")
    out: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": args}}
    call_id = _name(call.get("id"), f"{where}.id")
    return {"id": call_id, **out} if call_id is not None else out


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number within {low:g}..{high:g}")
    return float(value)
