"""Structural checks on a chat sample before it reaches the pool.

Roles must be known and alternate (system first if any; user and tool turns before an assistant
turn), content non-empty, and the sample within the token budget: a too-long conversation is
trimmed at a turn boundary (keeping whole user->assistant exchanges) or dropped when even the
first exchange is too long. Token counts are estimated (4 chars per token) so the check needs no
tokenizer; the trainer truncates exactly.
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

from sam_brain.protocols import Message, Sample

ROLES = {"system", "user", "assistant", "tool"}
CHARS_PER_TOKEN = 4
# The length of an OpenAI-shaped tool call as `json.dumps` writes it, without its four strings.
_CALL_FRAME = len(json.dumps({"id": "", "type": "", "function": {"name": "", "arguments": ""}})) - 8


def estimate_tokens(messages: list[Message]) -> int:
    """Estimated tokens of a chat sample: `message_chars` of each message, 4 chars a token."""
    return sum(map(message_chars, messages)) // CHARS_PER_TOKEN + 1


def message_chars(message: Message) -> int:
    """The characters one message adds to `estimate_tokens`.

    Its content, 8 for its frame, and each tool call as `json.dumps` (ASCII-escaped) writes it.
    """
    total = len(str(message.get("content") or "")) + 8
    for call in message.get("tool_calls") or ():
        total += _call_chars(call)
    return total


def _call_chars(call: Any) -> int:
    """`len(json.dumps(call))`, without building the JSON for the usual call shape."""
    fn = call.get("function") if type(call) is dict and len(call) == 3 else None
    if type(fn) is dict and len(fn) == 2:
        parts = (call.get("id"), call.get("type"), fn.get("name"), fn.get("arguments"))
        strings = [p for p in parts if type(p) is str]
        if len(strings) == 4:
            # Only the strings' escaped lengths vary; the frame is fixed whatever the key order.
            size = _CALL_FRAME
            for s in strings:
                size += len(encode_basestring_ascii(s))
            return size
    return len(json.dumps(call))


def _problem(messages: list[Message]) -> str | None:
    if not messages:
        return "empty"
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ROLES:
            return "unknown_role"
        if role == "system" and i != 0:
            return "system_not_first"
        has_calls = bool(m.get("tool_calls"))
        if not str(m.get("content") or "").strip() and not has_calls:
            return "empty_content"
        if role == "tool" and not m.get("tool_call_id"):
            return "tool_without_id"
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user":
        return "does_not_start_with_user"
    if body[-1]["role"] != "assistant":
        return "does_not_end_with_assistant"
    prev = ""
    for m in body:
        role = m["role"]
        if role == "user" and prev == "user":
            return "user_user"
        if role == "assistant" and prev == "assistant" and not m.get("tool_calls"):
            # Two assistant turns in a row are allowed only inside a tool-call chain.
            return "assistant_assistant"
        if role == "tool" and prev not in ("assistant", "tool"):
            return "tool_without_call"
        prev = role
    return None


def _trim(messages: list[Message], max_tokens: int) -> list[Message] | None:
    """Keep the longest prefix that ends on an assistant turn followed by a user turn (or the end)."""
    system = [m for m in messages[:1] if m["role"] == "system"]
    body = messages[len(system) :]
    cut_points = [
        i + 1
        for i, m in enumerate(body)
        if m["role"] == "assistant" and (i + 1 == len(body) or body[i + 1]["role"] == "user")
    ]
    for cut in reversed(cut_points):
        candidate = system + body[:cut]
        if estimate_tokens(candidate) <= max_tokens:
            return candidate
    return None


def check_sample(
    sample: Sample, max_tokens: int, min_chars: int
) -> tuple[Sample | None, str | None]:
    """Return (sample or trimmed sample, None) when usable, else (None, drop reason).

    A trimmed sample is returned with reason "trimmed" so the caller can count it.
    """
    if sample.kind == "preference":
        if not sample.chosen.strip() or not sample.rejected.strip():
            return None, "empty_preference"
        if sample.chosen == sample.rejected:
            return None, "chosen_equals_rejected"
        return sample, None
    problem = _problem(sample.messages)
    if problem:
        return None, problem
    answer = "".join(
        str(m.get("content") or "") for m in sample.messages if m["role"] == "assistant"
    )
    if len(answer.strip()) < min_chars and not any(m.get("tool_calls") for m in sample.messages):
        return None, "too_short"
    if estimate_tokens(sample.messages) <= max_tokens:
        return sample, None
    trimmed = _trim(sample.messages, max_tokens)
    if trimmed is None:
        return None, "too_long"
    sample.messages = trimmed
    return sample, "trimmed"
