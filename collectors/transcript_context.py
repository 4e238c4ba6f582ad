"""Place user-side context (what the model was shown besides the typed prompt) on its prompt.

`transcript_lines` turns slash-command invocations and their expansion, `!` shell lines and `@`-file
reads into `context` turns (which lines count: `transcript_wrappers`). While `transcript` merges
turns, `attach_before` and `place_context` put them on the prompt they belong to, so "please fix
these" keeps its referent; `user_content` is the user message text a sample trains with. Context is
user-side: never a training target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec.structs import replace

if TYPE_CHECKING:
    from collectors.transcript_lines import Turn


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
