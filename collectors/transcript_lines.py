"""One Claude Code transcript line: its typed shape, its fast decoding, and the turn it adds.

Each line is decoded straight into `Line` (msgspec), which names only the fields the parser
reads: the big ones it never reads (`toolUseResult` output copies, progress `data`, file-history
snapshots, usage) are skipped without being built. A line that does not fit that shape (not an
object, a field of an unexpected type, NULs, torn or half-written) goes the careful way of
`jsonl_lines`, which counts or salvages it; its JSON object is then fitted to `Line` leniently,
so it reads exactly as before. `line_turn` turns a user or assistant line into a `Turn`, and
`attachment_turn` a 2.1.x `@`-file attachment into a `context` turn (see `transcript_wrappers`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import msgspec

from collectors.jsonl_lines import Record, decode_lines
from collectors.transcript_wrappers import (
    CAVEAT_PREFIXES,
    CONTEXT_PREFIXES,
    WRAPPER_PREFIXES,
    attachment_text,
    is_local_command,
)

INTERRUPT_PREFIX = "[Request interrupted by user"
EVENT_PREFIX = "<task-notification>"  # a background task finished; the assistant reacts to it
_AGENT_ID_IN_TEXT = re.compile(r"agentId: ([A-Za-z0-9_-]+)")
# Claude Code appends these to tool output and prompts; they are its own instructions, not data.
_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>\s*", re.DOTALL)


# --------------------------------------------------------------------------------------------
# What a line gives


class ToolCall(TypedDict):
    """One tool call made by the assistant."""

    id: str
    name: str
    input: dict[str, Any]


class ToolResult(TypedDict):
    """The result of one tool call; `name` is filled in when it is paired with its call."""

    tool_use_id: str
    content: str
    is_error: bool
    name: NotRequired[str]
    agent_id: NotRequired[str]


class Turn(msgspec.Struct, gc=False):
    """One user, assistant or tool turn; `uuids` are the transcript lines merged into it.

    A msgspec Struct rather than a dataclass: one is built per transcript line, and a Struct is
    built several times faster. Copy one with `msgspec.structs.replace`. Not tracked by the
    cyclic garbage collector (gc=False): a turn holds no reference cycles.
    """

    role: str  # "user", "assistant" or "tool"
    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = msgspec.field(default_factory=list)
    results: list[ToolResult] = msgspec.field(default_factory=list)
    uuids: list[str] = msgspec.field(default_factory=list)
    timestamp: str = ""
    message_id: str = ""
    trigger: str = ""  # set when a background event, not the previous turn, prompted this turn
    # User turns: context shown to the model before and after the typed prompt (see user_content).
    context: str = ""
    context_after: str = ""


# --------------------------------------------------------------------------------------------
# The shape of a line. A field read only as text is `str | None`; a field read for its truth
# or printed in a skip reason is `Any`. gc=False: decoded lines hold no reference cycles.


class Block(msgspec.Struct, gc=False):
    """One content block (text, thinking, tool_use, tool_result, image, tool_reference...)."""

    type: Any = None
    text: str | None = None
    thinking: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None  # a tool result's output
    is_error: Any = None
    tool_name: str | None = None


class Message(msgspec.Struct, gc=False):
    """The API message of a user or assistant line."""

    id: str | None = None
    model: Any = None
    content: str | list[Block] | None = None


class ToolUseResult(msgspec.Struct, rename="camel", gc=False):
    """Claude Code's structured copy of a tool's result; only the subagent id is read."""

    agent_id: Any = None


class ProgressData(msgspec.Struct, gc=False):
    """The payload of a progress line; only its kind is read."""

    type: Any = None


class Line(msgspec.Struct, rename="camel", gc=False):
    """The fields of a transcript line that the parser reads (camelCase in the file)."""

    type: Any = None
    uuid: str | None = None
    parent_uuid: str | None = None
    logical_parent_uuid: str | None = None
    timestamp: str | None = None
    is_sidechain: Any = None
    session_id: Any = None
    cwd: str | None = None
    git_branch: str | None = None
    version: str | None = None
    is_meta: Any = None
    is_compact_summary: Any = None
    is_visible_in_transcript_only: Any = None
    is_api_error_message: Any = None
    subtype: Any = None
    agent_id: Any = None
    message: Message | None = None
    tool_use_result: ToolUseResult | str | None = None
    data: ProgressData | None = None
    attachment: Attachment | None = None


class Attachment(msgspec.Struct, rename="camel", gc=False):
    """A 2.1.x `attachment` line's payload; only `file` attachments (`@` references) are read."""

    type: Any = None
    filename: str | None = None
    display_path: str | None = None
    content: Any = None  # for `file`: {"type": "text", "file": {"filePath", "content", ...}}


_decode = msgspec.json.Decoder(Line).decode
_LINE_TEXT = ("uuid", "parentUuid", "logicalParentUuid", "timestamp", "cwd", "gitBranch", "version")
_ATTACHMENT_TEXT = ("filename", "displayPath")
_BLOCK_TEXT = ("text", "thinking", "id", "name", "tool_use_id", "tool_name")


def read_lines(path: Path, skipped: Counter[str]) -> Iterator[Line]:
    """The file's lines as `Line`s; unusable lines are counted in `skipped` (see jsonl_lines).

    A line whose only invalid UTF-8 sits in a field that is never read is kept: the fast
    decoder does not look inside skipped fields.
    """
    return decode_lines(path, skipped, _decode, _fit)


def _fit(rec: Record) -> Line:
    """A JSON object the fast decoder refused, as a `Line`: misfit fields read as absent.

    The parser treats them so anyway: text that is not a string is empty, a non-object
    `message` is a bad message, non-object items of a content list, and content that is neither
    text nor a list, are ignored.
    """
    msg = rec.get("message")
    tur = rec.get("toolUseResult")
    data = rec.get("data")
    att = rec.get("attachment")
    fitted = {
        **_text_only(rec, _LINE_TEXT),
        "message": {**_text_only(msg, ("id",)), "content": _fit_content(msg.get("content"))}
        if isinstance(msg, dict)
        else None,
        "toolUseResult": tur if isinstance(tur, (dict, str)) else None,
        "data": data if isinstance(data, dict) else None,
        "attachment": _text_only(att, _ATTACHMENT_TEXT) if isinstance(att, dict) else None,
    }
    return msgspec.convert(fitted, Line)


def _text_only(rec: Record, keys: tuple[str, ...]) -> Record:
    return {**rec, **{k: None for k in keys if not isinstance(rec.get(k), str)}}


def _fit_content(content: Any) -> str | list[Record] | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return [
            {
                **_text_only(b, _BLOCK_TEXT),
                "input": b.get("input") if isinstance(b.get("input"), dict) else None,
                "content": _fit_content(b.get("content")),
            }
            for b in content
            if isinstance(b, dict)
        ]
    return None


# --------------------------------------------------------------------------------------------
# The turn of a line


def _flatten(content: str | list[Block] | None, skipped: Counter[str]) -> str:
    """Tool-result content (a string or a list of blocks) as plain text."""
    if isinstance(content, str):  # the common case
        return strip_reminders(content, skipped)
    parts = []
    for block in content or ():
        kind = block.type
        if kind == "text":
            parts.append(block.text or "")
        elif kind == "image":
            skipped["image"] += 1
            parts.append("[image]")
        elif kind == "tool_reference":
            parts.append(f"[tool_reference: {block.tool_name or ''}]")
    return strip_reminders("\n".join(p for p in parts if p), skipped)


def strip_reminders(text: str, skipped: Counter[str]) -> str:
    """`text` without Claude Code's system reminders, counted in `skipped`.

    Each reminder goes with the whitespace around it, one newline standing in for it, and the
    result loses its outer newlines. The pattern starts at the tag, not at the whitespace before
    it: a pattern that starts with a literal is searched for many times faster.
    """
    if "<system-reminder>" not in text:  # the common case; a substring test is far cheaper
        return text
    parts = []
    pos = 0
    for m in _REMINDER.finditer(text):
        # The whitespace before a tag (after the previous reminder) goes with the reminder.
        parts.append(text[pos : m.start()].rstrip())
        parts.append("\n")
        pos = m.end()
    if pos == 0:
        return text  # an unclosed tag: nothing to remove
    skipped["system_reminder"] += len(parts) // 2
    parts.append(text[pos:])
    return "".join(parts).strip("\n")


def line_turn(line: Line, message: Message, skipped: Counter[str]) -> Turn | None:
    """The content a user or assistant line contributes, or None when the line is dropped.

    Args:
        line: A user or assistant line.
        message: Its `message` (the caller has checked that there is one).
        skipped: Receives a count for every dropped line or block, by reason.
    """
    if line.type == "assistant":
        return _assistant_turn(line, message, skipped)
    if line.is_compact_summary:
        skipped["compact_summary"] += 1
        return None
    if line.is_visible_in_transcript_only:
        skipped["meta"] += 1
        return None
    if line.is_meta:
        return _meta_context(line, message, skipped)
    results: list[ToolResult] = []
    texts = []
    content = message.content
    if isinstance(content, str):  # a typed prompt
        if text := strip_reminders(content, skipped).strip():
            texts.append(text)
    elif content:
        tur = line.tool_use_result
        agent_id = tur.agent_id if isinstance(tur, ToolUseResult) else None
        for block in content:
            kind = block.type
            if kind == "tool_result":
                # Dict literals: calling a TypedDict is three times slower.
                result: ToolResult = {
                    "tool_use_id": block.tool_use_id or "",
                    "content": _flatten(block.content, skipped),
                    "is_error": bool(block.is_error),
                }
                if isinstance(agent_id, str):
                    result["agent_id"] = agent_id
                elif "agentId: " in result["content"] and (
                    m := _AGENT_ID_IN_TEXT.search(result["content"])
                ):
                    result["agent_id"] = m.group(1)
                results.append(result)
            elif kind == "text":
                if text := strip_reminders(block.text or "", skipped).strip():
                    texts.append(text)
            elif kind == "image":
                skipped["image"] += 1
            else:
                skipped[f"block:{kind}"] += 1
    uuids = [line.uuid or ""]
    timestamp = line.timestamp or ""
    if results:
        if texts:
            skipped["tool_line_text"] += len(texts)
        return Turn("tool", results=results, uuids=uuids, timestamp=timestamp)
    text = "\n\n".join(texts)
    if text.startswith(EVENT_PREFIX):
        skipped["task_notification"] += 1
        return Turn("event", uuids=uuids, timestamp=timestamp)
    if text.startswith(WRAPPER_PREFIXES):
        if not text.startswith(CONTEXT_PREFIXES) or is_local_command(text):
            skipped["command"] += 1
            return None
        return Turn("context", text=text, uuids=uuids, timestamp=timestamp)
    if text.startswith(INTERRUPT_PREFIX):
        return Turn("interrupt", uuids=uuids, timestamp=timestamp)
    if not text:
        skipped["empty_user"] += 1
        return None
    return Turn("user", text=text, uuids=uuids, timestamp=timestamp)


def _meta_context(line: Line, message: Message, skipped: Counter[str]) -> Turn | None:
    """An `isMeta` user line as context: an expanded slash command or an `@`-file read.

    Caveats ("DO NOT respond to these messages") and hook reminders are not context: dropped.
    """
    content = message.content
    if isinstance(content, str):
        parts = [content]
    else:
        parts = [b.text or "" for b in content or () if b.type == "text"]
    text = strip_reminders("\n\n".join(p for p in parts if p), skipped).strip()
    if not text or text.startswith(CAVEAT_PREFIXES):
        skipped["meta"] += 1
        return None
    return Turn("context", text=text, uuids=[line.uuid or ""], timestamp=line.timestamp or "")


def attachment_turn(line: Line, skipped: Counter[str]) -> Turn | None:
    """A 2.1.x `file` attachment (an `@` reference) as context; other attachments give None."""
    att = line.attachment
    if att is None or att.type != "file":
        return None
    text = attachment_text(att.content, att.filename)
    if text is None:
        skipped["attachment_without_text"] += 1
        return None
    return Turn("context", text=text, uuids=[line.uuid or ""], timestamp=line.timestamp or "")


def _assistant_turn(line: Line, message: Message, skipped: Counter[str]) -> Turn | None:
    if line.is_api_error_message or message.model == "<synthetic>":
        skipped["synthetic_assistant"] += 1
        return None
    content = message.content
    blocks = [Block(type="text", text=content)] if isinstance(content, str) else content or ()
    texts, thoughts, calls = [], [], []
    for block in blocks:
        kind = block.type
        if kind == "text":
            if text := (block.text or "").strip():
                texts.append(text)
        elif kind == "thinking":
            if thought := (block.thinking or "").strip():
                thoughts.append(thought)
            else:
                skipped["empty_thinking"] += 1
        elif kind == "tool_use":
            tool_input = block.input
            call: ToolCall = {
                "id": block.id or "",
                "name": block.name or "",
                "input": tool_input if tool_input is not None else {},
            }
            calls.append(call)
        else:
            skipped[f"block:{kind}"] += 1
    if not (texts or thoughts or calls):
        skipped["empty_assistant"] += 1
        return None
    return Turn(
        "assistant",
        text="\n\n".join(texts),
        thinking="\n\n".join(thoughts),
        tool_calls=calls,
        uuids=[line.uuid or ""],
        timestamp=line.timestamp or "",
        message_id=message.id or "",
    )
