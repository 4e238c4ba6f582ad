"""Render a chat sample into the exact text a model is trained on, in the model's own format.

One function for every caller (both training backends through `sam_brain.masking`, the gate,
`samctl data show --render`, the export): `prepare` turns pool messages into what the base model's
chat template must see, and `apply_template` renders them. Two forms:

- **Native**, for templates that render tools (Qwen2.5, Llama 3.1, ...): OpenAI-style string
  `arguments` become JSON objects (Qwen2.5's template writes `tool_call.arguments | tojson`, so a
  string would train `"arguments": "{\\"command\\": ...}"`, which no Qwen tool-call parser reads),
  and `tools=` carries a JSON schema for every tool the sample calls (`sam_brain.tool_schemas`).
- **Hermes fallback**, for templates without tool support (SmolLM2's renders only `role` and
  `content`): the tool definitions go into the system message as the `# Tools` block below, each
  call becomes `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` in the assistant's
  content, and each run of tool results becomes one user message of `<tool_response>` blocks
  (the layout of Hermes 2 Pro and Qwen2.5), so any plain system/user/assistant template renders it.

Which form applies is found by rendering a probe conversation with the template (cached per
template text). The same `tools` are passed to every render of a sample, full or prefix, so the
prefix-based masks of `sam_brain.masking` stay exact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sam_brain.errors import BackendUnavailable
from sam_brain.protocols import Message
from sam_brain.tool_schemas import call_arguments, tool_definitions

TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
)

_PROBE_VALUE = "probe-value-7f3a"
_PROBE_DOC = "probe-description-7f3a"
_PROBE_RESULT = "probe-result-7f3a"
_PROBE_MESSAGES: list[Message] = [
    {"role": "user", "content": "probe"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "call_probe",
                "type": "function",
                "function": {"name": "probe_tool", "arguments": {"probe_arg": _PROBE_VALUE}},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_probe", "content": _PROBE_RESULT},
    {"role": "assistant", "content": "ok"},
]
_PROBE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "probe_tool",
            "description": _PROBE_DOC,
            "parameters": {"type": "object", "properties": {"probe_arg": {"type": "string"}}},
        },
    }
]
_support_cache: dict[str, bool] = {}


class ChatTemplateError(BackendUnavailable):
    """The base model's chat template cannot render or mask a sample (it fails, or is unstable)."""


@dataclass(frozen=True)
class Prepared:
    """What the chat template sees for one sample: the same for the full render and every prefix."""

    messages: list[Message]
    tools: list[dict[str, Any]] | None
    native: bool


def prepare(tokenizer: Any, messages: list[Message]) -> Prepared:
    """Messages and tool definitions in the form the tokenizer's chat template understands.

    Raises:
        ChatTemplateError: A tool call's `arguments` are not a JSON object.
    """
    native = native_messages(messages)
    tools = tool_definitions(native) or None
    if tools is None or supports_tools(tokenizer):
        return Prepared(native, tools, True)
    return Prepared(hermes_messages(native, tools), None, False)


def apply_template(
    tokenizer: Any, prepared: Prepared, count: int | None = None, *, add_generation_prompt: bool
) -> str:
    """The template's text for the first `count` prepared messages (all when None).

    Raises:
        ChatTemplateError: The template fails or does not render text.
    """
    messages = prepared.messages if count is None else prepared.messages[:count]
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if prepared.tools is not None:
        kwargs["tools"] = prepared.tools
    try:
        text = tokenizer.apply_chat_template(messages, **kwargs)
    except Exception as err:  # jinja errors of any kind: the template rejects this prefix
        raise ChatTemplateError(f"chat template failed on {len(messages)} messages: {err}") from err
    if not isinstance(text, str):
        raise ChatTemplateError(f"chat template rendered {type(text).__name__}, not text")
    return text


def render(tokenizer: Any, messages: list[Message], *, add_generation_prompt: bool = False) -> str:
    """The full text of one conversation, as training sees it."""
    prepared = prepare(tokenizer, messages)
    return apply_template(tokenizer, prepared, add_generation_prompt=add_generation_prompt)


def prompt_ids(tokenizer: Any, messages: list[Message]) -> list[int]:
    """Token ids of `messages` with the generation prompt, rendered as training renders them.

    So a model asked to continue an agentic conversation sees its tools and calls in the form it
    was trained on (for SmolLM2, the Hermes block), not the raw template's own rendering.
    """
    text = render(tokenizer, messages, add_generation_prompt=True)
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]


def supports_tools(tokenizer: Any) -> bool:
    """True when the chat template renders tool definitions, call arguments and tool results."""
    template = getattr(tokenizer, "chat_template", None)
    key = template if isinstance(template, str) else f"id:{id(tokenizer)}"
    if key not in _support_cache:
        try:
            text = tokenizer.apply_chat_template(
                _PROBE_MESSAGES, tools=_PROBE_TOOLS, tokenize=False, add_generation_prompt=False
            )
        except Exception:  # a template that raises on tools or the tool role has no support
            text = ""
        _support_cache[key] = isinstance(text, str) and all(
            s in text for s in (_PROBE_DOC, _PROBE_VALUE, _PROBE_RESULT)
        )
    return _support_cache[key]


def native_messages(messages: list[Message]) -> list[Message]:
    """Copies with every tool call's `arguments` as a JSON object and no None content."""
    out: list[Message] = []
    for i, m in enumerate(messages):
        copy = dict(m)
        # Real templates concatenate content; None would fail inside jinja with an obscure error.
        copy["content"] = "" if m.get("content") is None else m["content"]
        calls = m.get("tool_calls")
        if calls:
            copy["tool_calls"] = [_native_call(i, c) for c in calls]
        out.append(copy)
    return out


def _native_call(index: int, call: dict[str, Any]) -> dict[str, Any]:
    args = call_arguments(call)
    fn = call.get("function", call)
    if not isinstance(args, dict):
        name = fn.get("name") if isinstance(fn, dict) else None
        raise ChatTemplateError(
            f"messages[{index}]: arguments of tool call {name!r} are not a JSON object"
        )
    native: dict[str, Any] = {
        "type": "function",
        "function": {"name": fn.get("name"), "arguments": args},
    }
    if "id" in call:
        native = {"id": call["id"], **native}
    return native


def tools_block(tools: list[dict[str, Any]]) -> str:
    """The `# Tools` system text of the Hermes fallback (Qwen2.5's wording)."""
    lines = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
    return TOOLS_HEADER + lines + TOOLS_FOOTER


def hermes_messages(messages: list[Message], tools: list[dict[str, Any]]) -> list[Message]:
    """The fallback form: tools in the system message, calls and results inside content."""
    block = tools_block(tools)
    out: list[Message] = []
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = (str(first.get("content") or "") + "\n\n" + block).lstrip("\n")
        out.append(first)
        rest = messages[1:]
    else:
        out.append({"role": "system", "content": block})
        rest = messages
    for m in rest:
        role = m.get("role")
        if role == "assistant" and m.get("tool_calls"):
            copy = {k: v for k, v in m.items() if k != "tool_calls"}
            parts = [str(m.get("content") or "")] if m.get("content") else []
            for call in m["tool_calls"]:
                fn = call["function"]
                body = {"name": fn["name"], "arguments": fn["arguments"]}
                parts.append(
                    "<tool_call>\n" + json.dumps(body, ensure_ascii=False) + "\n</tool_call>"
                )
            copy["content"] = "\n".join(parts)
            out.append(copy)
        elif role == "tool":
            response = "<tool_response>\n" + str(m.get("content") or "") + "\n</tool_response>"
            if out[-1].get("role") == "user" and out[-1].get("_tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "_tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("_tool_results", None)
    return out
