"""The three public chat-dataset formats, each row turned into pool messages or a named problem.

- **openai**: `{"messages": [{"role", "content", "tool_calls", "tool_call_id", "weight"}], "tools"}`,
  the form of OpenAI's fine-tuning API, TRL and mlx-lm (content may be a list of text parts).
- **sharegpt**: `{"conversations": [{"from": "human"|"gpt"|"system"|..., "value"}], "system"}`,
  with LLaMA-Factory's `function_call` / `observation` turns for tool use.
- **alpaca**: `{"instruction", "input", "output", "system", "history"}`; a non-empty `input`
  follows the instruction after a blank line, as Alpaca's own prompt puts it.

Every problem is a `RowProblem` with a short code (counted by `--skip-bad`) and a reason naming
the message or field, so a user can fix the row from the error alone.
"""

from __future__ import annotations

import json
from typing import Any

from sam_brain.pipeline.validate import check_sample
from sam_brain.protocols import Message, Sample

FORMATS = ("openai", "sharegpt", "alpaca")
ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "function_call": "call",  # LLaMA-Factory: an assistant turn that calls tools
    "observation": "tool",  # LLaMA-Factory: the result of the call before it
    "tool": "tool",
}
# Reasons of `sam_brain.pipeline.validate` for a conversation whose shape no template can train.
STRUCTURE = {
    "empty": "no messages",
    "unknown_role": "an unknown role",
    "system_not_first": "a system message after the first message",
    "empty_content": "a message with empty content",
    "tool_without_id": "a tool result without tool_call_id",
    "does_not_start_with_user": "the first turn after the system prompt is not a user turn",
    "does_not_end_with_assistant": "the last turn is not an assistant turn",
    "user_user": "two user turns in a row",
    "assistant_assistant": "two assistant turns in a row",
    "tool_without_call": "a tool result without a tool call before it",
}
_json = json.JSONEncoder(ensure_ascii=False).encode


class RowProblem(Exception):
    """Why one row cannot be imported: `code` for counting, the message for the user."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code


def detect(value: Any) -> str | None:
    """The format a row is written in, from its keys (None: none of the three)."""
    if not isinstance(value, dict):
        return None
    if isinstance(value.get("messages"), list):
        return "openai"
    if isinstance(value.get("conversations"), list):
        return "sharegpt"
    if "instruction" in value and "output" in value:
        return "alpaca"
    return None


def convert(fmt: str, row: Any) -> tuple[list[Message], list[Any] | None]:
    """The row's messages and its tool definitions (OpenAI `tools`, ShareGPT `tools`), if any.

    Raises:
        RowProblem: the row is not an object of `fmt`, or its conversation cannot be trained.
    """
    if not isinstance(row, dict):
        raise RowProblem("not_object", f"a row must be a JSON object, got {_type(row)}")
    if fmt == "openai":
        messages = _openai(row)
    elif fmt == "sharegpt":
        messages = _sharegpt(row)
    else:
        messages = _alpaca(row)
    tools = row.get("tools")
    if isinstance(tools, str) and fmt == "sharegpt":  # LLaMA-Factory stores them as JSON text
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError:
            raise RowProblem("wrong_type", "'tools' is text but not JSON") from None
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise RowProblem("wrong_type", "'tools' must be a list of tool definitions")
    _check_shape(messages)
    return messages, tools or None


def _check_shape(messages: list[Message]) -> None:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowProblem("no_assistant_turn", "the conversation has no assistant turn")
    # The pipeline's own structural check, without its length and size limits (those drop or
    # trim a sample later, as for every source; they are not a malformed row).
    probe = Sample(id="", source="dataset", source_key="", group="", messages=messages)
    _, reason = check_sample(probe, 1 << 62, 0)
    if reason is not None:
        raise RowProblem(reason, STRUCTURE.get(reason, reason.replace("_", " ")))


def _openai(row: dict[str, Any]) -> list[Message]:
    raw = _list(row, "messages")
    out: list[Message] = []
    call_ids: set[str] = set()
    for i, m in enumerate(raw, 1):
        where = f"message {i}"
        if not isinstance(m, dict):
            raise RowProblem("wrong_type", f"{where} is {_type(m)}, not an object")
        role = m.get("role")
        if role not in ROLES:
            raise RowProblem("unknown_role", f"{where}: unknown role {_short(role)}")
        msg: Message = {"role": role, "content": _content(m.get("content"), where)}
        if role == "assistant":
            calls = m.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise RowProblem("wrong_type", f"{where}: 'tool_calls' must be a list")
                msg["tool_calls"] = [
                    _call(c, f"{where}, tool call {j}", f"call_{i}_{j}")
                    for j, c in enumerate(calls, 1)
                ]
                call_ids.update(c["id"] for c in msg["tool_calls"])
            if "weight" in m:  # OpenAI's per-message switch: 0 = context, not trained on
                weight = m["weight"]
                if weight not in (0, 1) or isinstance(weight, bool):
                    raise RowProblem("wrong_type", f"{where}: 'weight' must be 0 or 1")
                msg["weight"] = int(weight)
        elif role == "tool":
            tid = m.get("tool_call_id")
            if not isinstance(tid, str) or not tid:
                raise RowProblem("bad_tool_result", f"{where}: a tool message needs a tool_call_id")
            if tid not in call_ids:
                raise RowProblem(
                    "bad_tool_result", f"{where}: tool_call_id {tid!r} answers no earlier tool call"
                )
            msg["tool_call_id"] = tid
            if isinstance(m.get("name"), str) and m["name"]:
                msg["name"] = m["name"]
        out.append(_nonempty(msg, where))
    return out


def _content(value: Any, where: str) -> str:
    """Text content: a string, null, or a list of `{"type": "text", "text": ...}` parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                kind = part.get("type") if isinstance(part, dict) else _type(part)
                raise RowProblem("not_text", f"{where}: a content part of type {_short(kind)}")
            if not isinstance(part.get("text"), str):
                raise RowProblem("wrong_type", f"{where}: a text part without a 'text' string")
            parts.append(part["text"])
        return "".join(parts)
    raise RowProblem("wrong_type", f"{where}: content must be text, got {_type(value)}")


def _call(call: Any, where: str, default_id: str) -> dict[str, Any]:
    """One OpenAI tool call, with its arguments as JSON text of an object (as curate writes)."""
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        raise RowProblem("bad_tool_call", f"{where}: needs a 'function' object")
    if call.get("type", "function") != "function":
        raise RowProblem("bad_tool_call", f"{where}: type {_short(call.get('type'))}")
    fn = call["function"]
    name, args = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not name.strip():
        raise RowProblem("bad_tool_call", f"{where}: no function name")
    if isinstance(args, str):
        try:
            parsed = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise RowProblem("bad_tool_call", f"{where} ({name}): arguments are not a JSON object")
        args = _json(parsed)
    elif isinstance(args, dict):
        args = _json(args)
    else:
        raise RowProblem("bad_tool_call", f"{where} ({name}): arguments are not a JSON object")
    cid = call.get("id")
    if cid is not None and (not isinstance(cid, str) or not cid):
        raise RowProblem("bad_tool_call", f"{where} ({name}): 'id' must be a non-empty string")
    return {
        "id": cid or default_id,
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def _sharegpt(row: dict[str, Any]) -> list[Message]:
    out: list[Message] = []
    system = row.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise RowProblem("wrong_type", f"'system' must be text, got {_type(system)}")
        if system.strip():
            out.append({"role": "system", "content": system})
    pending: list[str] = []  # ids of tool calls not yet answered by an observation
    for i, turn in enumerate(_list(row, "conversations"), 1):
        where = f"turn {i}"
        if not isinstance(turn, dict):
            raise RowProblem("wrong_type", f"{where} is {_type(turn)}, not an object")
        speaker = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RowProblem("unknown_role", f"{where}: unknown speaker {_short(speaker)}")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise RowProblem("wrong_type", f"{where}: 'value' must be text, got {_type(value)}")
        if role == "call":
            calls = _sharegpt_calls(value, where, i)
            pending = [c["id"] for c in calls]
            out.append({"role": "assistant", "content": "", "tool_calls": calls})
            continue
        msg: Message = {"role": role, "content": value}
        if role == "tool":
            if not pending:
                raise RowProblem("bad_tool_result", f"{where}: an observation without a call")
            msg["tool_call_id"] = pending.pop(0)
        out.append(_nonempty(msg, where))
    return out


def _sharegpt_calls(value: str, where: str, turn: int) -> list[dict[str, Any]]:
    """A `function_call` turn's value: JSON of `{"name", "arguments"}` or a list of them."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        raise RowProblem("bad_tool_call", f"{where}: a function_call that is not JSON") from None
    items = parsed if isinstance(parsed, list) else [parsed]
    return [
        _call(
            {"function": c} if isinstance(c, dict) else c, f"{where}, call {j}", f"call_{turn}_{j}"
        )
        for j, c in enumerate(items, 1)
    ]


def _alpaca(row: dict[str, Any]) -> list[Message]:
    instruction = _text(row, "instruction", required=True)
    extra = _text(row, "input", required=False)
    output = _text(row, "output", required=True)
    system = _text(row, "system", required=False)
    out: list[Message] = [{"role": "system", "content": system}] if system.strip() else []
    history = row.get("history")
    if history is not None:
        if not isinstance(history, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p)
            for p in history
        ):
            raise RowProblem("wrong_type", "'history' must be a list of [instruction, output]")
        for j, (q, a) in enumerate(history, 1):
            out.append(_nonempty({"role": "user", "content": q}, f"history {j}"))
            out.append(_nonempty({"role": "assistant", "content": a}, f"history {j}"))
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    out.append({"role": "user", "content": prompt})
    out.append({"role": "assistant", "content": output})
    return out


def _text(row: dict[str, Any], key: str, *, required: bool) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if value is None:
        raise RowProblem("missing_field", f"no {key!r} field")
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"{key!r} must be text, got {_type(value)}")
    if required and not value.strip():
        raise RowProblem("empty_content", f"{key!r} is empty")
    return value


def _list(row: dict[str, Any], key: str) -> list[Any]:
    value = row.get(key)
    if value is None:
        raise RowProblem("missing_field", f"no {key!r} list")
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"{key!r} must be a list, got {_type(value)}")
    if not value:
        raise RowProblem("empty_content", f"{key!r} is empty")
    return value


def _nonempty(msg: Message, where: str) -> Message:
    if not str(msg.get("content") or "").strip() and not msg.get("tool_calls"):
        raise RowProblem("empty_content", f"{where} ({msg['role']}): empty content")
    return msg


def _type(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "text", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
