"""Validate an OpenAI `/v1/chat/completions` request body into a `ChatRequest`.

Unknown OpenAI fields are ignored; fields we cannot honour (`n` > 1, `stop` sequences, non-text
content parts) are refused with a `BadRequest` that names the field, so a client learns why
instead of getting a silently different answer. Requests without a conversation id are keyed by
their first user message, which keeps canary routing sticky per conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sam_brain.errors import BadRequest
from sam_brain.protocols import Message

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class ChatRequest:
    """A validated `/v1/chat/completions` body."""

    messages: list[Message]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stream: bool = False
    model: str | None = None
    conversation_key: str = ""


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
    messages = [_message(i, m) for i, m in enumerate(raw)]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max_tokens))
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("'max_tokens' must be an integer")
    if not 1 <= max_tokens <= max_tokens_limit:
        raise BadRequest(f"'max_tokens' must be within 1..{max_tokens_limit}")
    temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 1e-9, 1.0)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false")
    if body.get("n", 1) != 1:
        raise BadRequest("'n' must be 1: one choice per request")
    if body.get("stop") not in (None, "", []):
        raise BadRequest("'stop' sequences are not supported")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string")
    key = body.get("conversation_id") or body.get("user")
    if key is not None and not isinstance(key, str):
        raise BadRequest("'user' and 'conversation_id' must be strings")
    if not key:  # no id: the first user message identifies the conversation
        first = next((m for m in messages if m["role"] == "user"), messages[0])
        key = json.dumps(first.get("content"))
    return ChatRequest(messages, max_tokens, temperature, top_p, stream, model, key)


def _message(i: int, m: Any) -> Message:
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise BadRequest(f"messages[{i}] must be an object with a role in {', '.join(ROLES)}")
    content = m.get("content")
    if isinstance(content, list):  # OpenAI content parts: only text is understood
        if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
            raise BadRequest(f"messages[{i}].content: only text parts are supported")
        content = "".join(str(p.get("text", "")) for p in content)
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"messages[{i}].content must be a string")
    out: Message = {"role": m["role"], "content": content or ""}
    for extra in ("tool_calls", "tool_call_id", "name"):
        if extra in m:
            out[extra] = m[extra]
    return out


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number within {low:g}..{high:g}")
    return float(value)
