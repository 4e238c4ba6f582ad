"""User-side context in a Claude Code transcript: what the model was shown besides the typed prompt.

Slash-command invocations (`<command-name>…`) and their expanded prompt (an `isMeta` line), `!`
shell input and output (`<bash-input>`, `<bash-stdout>`, `<bash-stderr>`), and `@`-file contents
(`isMeta` "Called the Read tool…" lines in 1.x/2.0, `attachment` lines of type `file` in 2.1.x)
become `context` turns in `transcript_lines`; `place_context` attaches them while turns are merged,
so "please fix these" keeps its referent. Context is user-side: never a training target.
Built-in commands that run locally (`/clear`, `/mcp`, `/model`…) add nothing the model acts on and
are dropped as `command`; so are their `<local-command-stdout>` and the local-command caveats.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from msgspec.structs import replace

if TYPE_CHECKING:
    from collectors.transcript_lines import Turn

# Wrapped user text that is context; other wrapped text (local-command output, caveats) is not.
CONTEXT_PREFIXES = (
    "<command-name>",
    "<command-message>",
    "<command-args>",
    "<bash-input>",
    "<bash-stdout>",
    "<bash-stderr>",
)
CAVEAT_PREFIXES = ("Caveat:", "<local-command-caveat>")  # "DO NOT respond to these messages"
# Claude Code's built-in commands that run locally and add no prompt for the model.
LOCAL_COMMANDS = frozenset(
    {
        "add-dir", "agents", "bashes", "bug", "clear", "compact", "config", "context", "copy",
        "cost", "doctor", "exit", "export", "fast", "help", "hooks", "ide", "install-github-app",
        "login", "logout", "mcp", "memory", "model", "output-style", "permissions", "plugin",
        "privacy-settings", "release-notes", "resume", "rewind", "sandbox", "skills", "stats",
        "status", "statusline", "tasks", "terminal-setup", "theme", "todos", "upgrade", "usage",
        "vim",
    }
)  # fmt: skip
_COMMAND_NAME = re.compile(r"<command-name>/?([^<]*)</command-name>")
_arguments_json = json.JSONEncoder(ensure_ascii=False).encode


def is_local_command(text: str) -> bool:
    """A built-in command that adds no prompt (`/clear`, `/mcp`, ...), not a custom command."""
    m = _COMMAND_NAME.search(text)
    return m is not None and m.group(1).strip() in LOCAL_COMMANDS


def attachment_text(content: Any, filename: str | None) -> str | None:
    """A `file` attachment as the text 1.x and 2.0 wrote for an `@` reference (None: no text).

    Args:
        content: The attachment's `content` (`{"type": "text", "file": {"filePath", "content"}}`).
        filename: Its `filename`, used when the content names no path.
    """
    file = content.get("file") if isinstance(content, dict) else None
    text = file.get("content") if isinstance(file, dict) else content
    path = (file.get("filePath") if isinstance(file, dict) else None) or filename
    if not isinstance(text, str) or not isinstance(path, str):
        return None
    call = _arguments_json({"file_path": path})
    return (
        f"Called the Read tool with the following input: {call}\n"
        f"Result of calling the Read tool:\n{text}"
    )


def _join(*parts: str) -> str:
    return "\n\n".join(p for p in parts if p)


def attach_before(prompt: Turn, pending: list[Turn]) -> None:
    """Context read before a typed prompt (a command's output, `!` shell lines) goes before it."""
    prompt.context = _join(prompt.context, *(t.text for t in pending))
    prompt.uuids.extend(u for t in pending for u in t.uuids)  # the prompt's own uuid stays first
    pending.clear()


def place_context(turns: list[Turn], pending: list[Turn]) -> None:
    """Attach the context read since the last turn, before the assistant turn that follows.

    Right after a prompt (an `@` file read for it): shown after the prompt. Right after a tool
    result (a skill's instructions, loaded by the Skill call): appended to that result, so the
    tool loop is not cut. Otherwise (a slash command and no typed prompt): the context is the
    exchange's prompt, a user turn with no typed text.
    """
    text = _join(*(t.text for t in pending))
    uuids = [u for t in pending for u in t.uuids]
    last = turns[-1] if turns else None
    if last is not None and last.role == "user":
        last.context_after = _join(last.context_after, text)
        last.uuids.extend(uuids)
    elif last is not None and last.role == "tool" and last.results:
        result = last.results[-1]
        result["content"] = _join(result["content"], text)
        last.uuids.extend(uuids)
    else:
        turns.append(replace(pending[0], role="user", text="", context=text, uuids=uuids))
    pending.clear()


def user_content(turn: Turn, context_chars: int = 0) -> str:
    """A user turn's message text: its context before, the typed prompt, its context after.

    Args:
        turn: A user turn.
        context_chars: Longest context kept on each side (head and tail); 0 keeps all of it.
    """
    if not (turn.context or turn.context_after):
        return turn.text
    return _join(
        clip(turn.context, context_chars), turn.text, clip(turn.context_after, context_chars)
    )


def clip(text: str, limit: int) -> str:
    """Keep the head and tail of `text` (3:1) with a marker naming how much was cut."""
    if limit <= 0 or len(text) <= limit:
        return text
    tail = limit // 4
    head = limit - tail
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... {cut} chars truncated ...]\n{text[len(text) - tail :]}"
