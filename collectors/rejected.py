"""Tool calls the user rejected or interrupted: never taught, kept as DPO preference pairs.

Claude Code records a rejected call as an error result ("The user doesn't want to proceed with
this tool use...", or "[Request interrupted by user for tool use]"). `curate` gives the assistant
message making such a call `weight: 0` (shown, not taught); `pairs` pairs it, as the rejected
answer, with the next taught assistant message (the action the user accepted next), after the
same context. Answers are text, as the DPO stage reads them (`masking.load_pairs`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from collectors.transcript_lines import INTERRUPT_PREFIX
from sam_brain.pipeline.windowing import Window, build, supervised
from sam_brain.protocols import Message

if TYPE_CHECKING:
    from collectors.transcript_lines import ToolResult

# What Claude Code writes as the result of a tool call the user rejected or interrupted.
REJECTION_PREFIXES = ("The user doesn't want to proceed with this tool use", INTERRUPT_PREFIX)


def is_rejection(result: ToolResult) -> bool:
    """True for the result Claude Code records when the user rejects or interrupts a tool call."""
    return result["is_error"] and result["content"].lstrip().startswith(REJECTION_PREFIXES)


def pairs(
    raw: list[Message], window: Window, system_prompt: str = ""
) -> list[tuple[list[Message], Message, Message]]:
    """(prompt, rejected, chosen) for each rejected call the window holds outside its context.

    The chosen side is the next assistant message that is taught (the action the user accepted
    next); a rejected call with nothing after it gives no pair.
    """
    out = []
    for pos, i in enumerate(window.indices):
        if i in window.context or raw[i].get("role") != "assistant" or supervised(raw[i]):
            continue
        chosen = next((m for m in raw[i + 1 :] if supervised(m)), None)
        if chosen is None:
            continue
        head = Window(window.indices[:pos], window.context, window.elided)
        prompt = [
            {k: v for k, v in m.items() if k != "weight"} for m in build(raw, head, trim=False)
        ]
        if system_prompt:
            prompt.insert(0, {"role": "system", "content": system_prompt})
        out.append((prompt, raw[i], chosen))
    return out


def as_text(message: Message) -> str:
    """An assistant message as plain text: its content, then each call as a Hermes `<tool_call>`.

    The DPO stage takes answers as text; this is the form Qwen2.5's template renders calls in.
    """
    parts = [str(message.get("content") or "")]
    for call in message.get("tool_calls") or ():
        fn = call["function"]
        try:
            args = (
                json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
            )
        except ValueError:
            args = fn["arguments"]
        body = json.dumps({"name": fn["name"], "arguments": args}, ensure_ascii=False)
        parts.append(f"<tool_call>\n{body}\n</tool_call>")
    return "\n".join(p for p in parts if p)
