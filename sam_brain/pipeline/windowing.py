"""Cut chat messages into training windows that fit a token budget; nothing is dropped for length.

An exchange is a user prompt and the steps after it (a step: one assistant message and the tool
results answering it). Whole exchanges are packed greedily, in order, while they fit. An exchange
longer than the budget is cut inside itself between steps (after a tool result): each window
repeats the exchange's prompt, shows the steps just before as unsupervised context (assistant
messages get `"weight": 0`, the OpenAI fine-tuning key that `masking.encode_chat` honours), notes
how many earlier steps were elided, and supervises the next steps. So every assistant message is
supervised in exactly one window, and no window needs more than the budget unless one step does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sam_brain.pipeline.validate import message_chars
from sam_brain.protocols import Message
from sam_brain.render import tools_block
from sam_brain.tool_schemas import tool_definitions

TokenCount = Callable[[Message], int]
# Without the base model's tokenizer on disk: 3 characters a token, below what Qwen2.5's
# tokenizer averages on code, JSON and English (3.3-4.2), so windows err on the short side.
SAFE_CHARS_PER_TOKEN = 3
MESSAGE_OVERHEAD = 6  # template tokens around one message: `<|im_start|>role\n` ... `<|im_end|>\n`
NOTE_TOKENS = 16  # the elision note added to a repeated prompt
CONTEXT_SHARE = 0.5  # at most this share of a split window is spent on earlier steps as context
MIN_CLIP_TOKENS = 32  # a context tool result cut shorter than this is not worth showing
CLIP_CHARS_PER_TOKEN = 3  # cut context at the text's own ratio, at most 3 characters a token


def estimate_tokens(message: Message) -> int:
    """A conservative token count of one message (see SAFE_CHARS_PER_TOKEN)."""
    return message_chars(message) // SAFE_CHARS_PER_TOKEN + MESSAGE_OVERHEAD


def elision_note(steps: int) -> str:
    return f"[... {steps} earlier step{'s' if steps != 1 else ''} elided ...]"


def supervised(message: Message) -> bool:
    """True for an assistant message the loss is computed on (not context, not rejected)."""
    return message.get("role") == "assistant" and message.get("weight", 1) != 0


@dataclass(frozen=True)
class Window:
    """One training window: message indices in order, which are context, and the note to add.

    `elided` counts steps of the window's exchange left out between its prompt and its context;
    `clip` names context tool results too long to show whole, each with the characters kept.
    """

    indices: tuple[int, ...]
    context: frozenset[int] = frozenset()
    elided: int = 0
    clip: tuple[tuple[int, int], ...] = ()  # (index, characters): context tool results cut


def exchanges(messages: Sequence[Message]) -> list[list[int]]:
    """Message indices grouped by user prompt; messages before the first prompt are left out."""
    groups: list[list[int]] = []
    for i, m in enumerate(messages):
        if m.get("role") == "user":
            groups.append([])
        if groups and m.get("role") != "system":
            groups[-1].append(i)
    return groups


def _steps(messages: Sequence[Message], group: list[int]) -> list[list[int]]:
    """An exchange's steps after its prompt: each assistant message with the tools after it."""
    steps: list[list[int]] = []
    for i in group[1:]:
        if messages[i].get("role") == "assistant" or not steps:
            steps.append([])
        steps[-1].append(i)
    return steps


def _kept(messages: Sequence[Message], indices: list[int], sizes: list[int]) -> int:
    """Size of `indices` up to their last assistant message (what a window ending there keeps)."""
    total = kept = 0
    for i in indices:
        total += sizes[i]
        if messages[i].get("role") == "assistant":
            kept = total
    return kept


def plan(
    messages: Sequence[Message], budget: int, count: TokenCount = estimate_tokens
) -> list[Window]:
    """Windows over `messages` (system messages excluded) within `budget` tokens each.

    Args:
        messages: A conversation, starting anywhere; assistant messages may carry `weight: 0`.
        budget: Tokens per window (reserve the system prompt and template framing yourself).
        count: Tokens of one message (the base model's tokenizer, or `estimate_tokens`).
    """
    many = getattr(count, "many", None)  # a tokenizer counts a batch at once, on every core
    sizes = list(many(messages)) if many else [count(m) for m in messages]
    out: list[Window] = []
    current: list[int] = []
    total = kept = 0  # `current`'s size, and up to its last assistant message
    for group in exchanges(messages):
        group_total = sum(sizes[i] for i in group)
        group_kept = _kept(messages, group, sizes)
        if group_kept <= budget or len(group) < 3:
            tried = total + group_kept if group_kept else kept
            if current and tried > budget:
                out.append(Window(tuple(current)))
                current, total, kept = [], 0, 0
                tried = group_kept
            current.extend(group)
            total += group_total
            kept = tried
            continue
        if current:
            out.append(Window(tuple(current)))
            current, total, kept = [], 0, 0
        out.extend(_split(messages, group, sizes, budget))
    if current:
        out.append(Window(tuple(current)))
    return out


def _split(
    messages: Sequence[Message], group: list[int], sizes: list[int], budget: int
) -> list[Window]:
    """Windows inside one over-long exchange: prompt, elided context, then supervised steps."""
    prompt = group[0]
    steps = _steps(messages, group)
    full = [sum(sizes[i] for i in s) for s in steps]
    kept = [_kept(messages, s, sizes) for s in steps]
    out: list[Window] = []
    start = 0
    while start < len(steps):
        context: list[int] = []
        room = budget - sizes[prompt]
        if start:
            # Context: the steps just before, newest first, within its share and leaving
            # room for at least the first supervised step.
            limit = min(int(budget * CONTEXT_SHARE), room - NOTE_TOKENS - kept[start])
            used = 0
            j = start - 1
            while j >= 0 and used + full[j] <= limit:
                used += full[j]
                context[:0] = steps[j]
                j -= 1
            clip: tuple[tuple[int, int], ...] = ()
            if j == start - 1:
                # The step just before is too long for the context: show it with its tool
                # results cut short, so the next step still sees what it reacts to.
                tools = [i for i in steps[j] if messages[i].get("role") == "tool"]
                fixed = full[j] - sum(sizes[i] for i in tools)
                per = (limit - fixed) // max(1, len(tools)) - MESSAGE_OVERHEAD - NOTE_TOKENS
                if tools and per >= MIN_CLIP_TOKENS:
                    clip = tuple((i, _chars_for(messages[i], sizes[i], per)) for i in tools)
                    used = fixed + len(tools) * (per + MESSAGE_OVERHEAD + NOTE_TOKENS)
                    context = list(steps[j])
                    j -= 1
            elided = j + 1
            room -= used + (NOTE_TOKENS if elided else 0)
        else:
            elided, clip = 0, ()
        end, used = start + 1, full[start]
        while end < len(steps) and used + kept[end] <= room:
            used += full[end]
            end += 1
        body = [i for s in steps[start:end] for i in s]
        indices = (prompt, *context, *body)
        out.append(Window(indices, frozenset(context), elided, clip))
        start = end
    return out


def _chars_for(message: Message, tokens: int, allowed: int) -> int:
    """Characters of `message`'s content that make about `allowed` tokens, at its own ratio."""
    chars = len(str(message.get("content") or ""))
    ratio = chars / max(1, tokens - MESSAGE_OVERHEAD)
    return int(allowed * min(ratio, CLIP_CHARS_PER_TOKEN) * 0.9)


def clip_text(text: str, chars: int) -> str:
    """Keep the head and tail of `text` (3:1) within `chars`, naming how much was cut."""
    if len(text) <= chars:
        return text
    tail = chars // 4
    head = chars - tail
    return (
        f"{text[:head]}\n[... {len(text) - head - tail} chars cut ...]\n{text[len(text) - tail :]}"
    )


def build(messages: Sequence[Message], window: Window, *, trim: bool = True) -> list[Message]:
    """The window's messages: context marked `weight: 0`, the note in the prompt, no tail.

    With `trim`, trailing messages that are not supervised (tool results, rejected calls) are
    cut, so the window ends on what it teaches; an empty list means it teaches nothing.
    """
    out: list[Message] = []
    clips = dict(window.clip)
    for i in window.indices:
        m = messages[i]
        if i in window.context and m.get("role") == "assistant":
            m = {**m, "weight": 0}
        elif i in clips:
            m = {**m, "content": clip_text(str(m.get("content") or ""), clips[i])}
        elif window.elided and not out and m.get("role") == "user":
            m = {**m, "content": f"{m.get('content') or ''}\n\n{elision_note(window.elided)}"}
        out.append(m)
    while trim and out and not supervised(out[-1]):
        out.pop()
    return out


def tools_tokens(messages: Sequence[Message], count: TokenCount = estimate_tokens) -> int:
    """Tokens of the tool-definitions block the renderer puts before a sample that calls tools.

    The block lists every tool the messages call (`sam_brain.render`), so it is counted for the
    messages given: for a whole conversation it bounds the block of any window cut from it.
    """
    tools = tool_definitions(list(messages))
    return count({"role": "system", "content": tools_block(tools)}) if tools else 0


def split_rows(
    rows: Sequence[list[Message]], budget: int, count: TokenCount = estimate_tokens
) -> tuple[list[list[Message]], int]:
    """Re-cut rows longer than `budget` (by `count`) into windows; returns rows and how many split.

    A row's system message (if any) is repeated in each window and its tokens reserved.
    """
    out: list[list[Message]] = []
    split = 0
    for row in rows:
        system = [m for m in row[:1] if m.get("role") == "system"]
        tools = tools_tokens(row, count)
        if sum(count(m) for m in row) + tools <= budget:
            out.append(row)
            continue
        reserve = sum(count(m) for m in system) + tools
        windows = [build(row, w) for w in plan(row, budget - reserve, count)]
        windows = [system + w for w in windows if w]
        split += 1
        out.extend(windows)
    return out, split
