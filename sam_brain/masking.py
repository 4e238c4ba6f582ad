"""Token ids and loss masks for chat rows, shared by every training backend.

Both backends call `encode_chat`, so the MLX and CUDA trainers supervise exactly the same tokens:
every assistant turn (its content, its tool calls and its closing end-of-turn token such as
`<|im_end|>`) has mask 1, except one marked `"weight": 0` (context a window repeats, or a call the
user rejected; the OpenAI fine-tuning convention); system, user and tool-result tokens and the assistant header
(`<|im_start|>assistant\\n`) have mask 0. Spans are found generically by rendering prefixes of the
conversation with the model's own chat template (`messages[:i]` plus the generation prompt marks
where assistant turn `i` starts, `messages[:i+1]` where it ends), so no template is parsed by hand;
a template whose renders are not prefixes of the full conversation is refused, because its masks
would be wrong. The full conversation is tokenized once and characters are mapped to tokens.
Rendering itself (native tool calls, `tools=`, the Hermes fallback) is `sam_brain.render`'s job;
the prefixes are taken of its prepared messages, with the same `tools` for every render.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest
from sam_brain.protocols import Message
from sam_brain.render import ChatTemplateError, Prepared, apply_template, prepare

# Copied from transformers' Qwen2Tokenizer (PRETOKENIZE_REGEX); it must match byte for byte.
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


@dataclass
class MaskStats:
    """Counts from encoding a dataset; every dropped or shortened row is counted, never silent."""

    rows: int = 0
    kept: int = 0
    truncated: int = 0
    fully_masked: int = 0
    tokens: int = 0
    supervised_tokens: int = 0


def encode_chat(
    tokenizer: Any, messages: list[Message], max_length: int
) -> tuple[list[int], list[int]]:
    """Tokenize one conversation and mark the tokens the loss is computed on.

    Args:
        tokenizer: A Hugging Face tokenizer or mlx-lm's `TokenizerWrapper` (which forwards
            `apply_chat_template` and the rest to the Hugging Face tokenizer).
        messages: Chat messages; assistant messages may carry OpenAI-style `tool_calls`.
        max_length: Keep at most this many tokens (the tail is cut).

    Returns:
        `(ids, mask)` of equal length; `mask[k]` is 1 where token `k` belongs to an assistant turn.

    Raises:
        ChatTemplateError: The template fails on a prefix or is not prefix-stable.
    """
    ids, mask = _encode_full(tokenizer, messages)
    return ids[:max_length], mask[:max_length]


def fully_masked(mask: list[int]) -> bool:
    """True when a row has no supervised token at all (it would add nothing but padding)."""
    return not any(mask)


def encode_rows(
    tokenizer: Any, rows: Iterable[list[Message]], max_length: int
) -> tuple[list[tuple[list[int], list[int]]], MaskStats]:
    """Encode many conversations, dropping fully masked rows and counting truncations.

    Args:
        tokenizer: As for `encode_chat`.
        rows: One message list per conversation.
        max_length: Token limit per row.

    Returns:
        The kept `(ids, mask)` pairs, in input order, and the counts.
    """
    kept: list[tuple[list[int], list[int]]] = []
    stats = MaskStats()
    for messages in rows:
        stats.rows += 1
        ids, mask = _encode_full(tokenizer, messages)
        if len(ids) > max_length:
            stats.truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        if fully_masked(mask):
            stats.fully_masked += 1
            continue
        stats.kept += 1
        stats.tokens += len(ids)
        stats.supervised_tokens += sum(mask)
        kept.append((ids, mask))
    return kept, stats


def load_rows(path: Path) -> list[list[Message]]:
    """Read a `{"messages": [...]}`-per-line JSONL file; a missing file is an empty split.

    Raises:
        BadRequest: A line is not JSON or has no `messages` list.
    """
    if not path.exists():
        return []
    rows: list[list[Message]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BadRequest(f"{path}:{lineno}: not JSON ({err.msg})") from err
            messages = row.get("messages") if isinstance(row, dict) else None
            if not isinstance(messages, list):
                raise BadRequest(f'{path}:{lineno}: expected {{"messages": [...]}}')
            rows.append(messages)
    return rows


def supervised_spans(tokenizer: Any, messages: list[Message]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns.

    Raises:
        ChatTemplateError: The template fails on a prefix or is not prefix-stable.
    """
    prepared = prepare(tokenizer, messages)
    full = _render(tokenizer, prepared, None, add_generation_prompt=False)
    spans: list[tuple[int, int]] = []
    for i, message in enumerate(prepared.messages):
        if message.get("role") != "assistant" or message.get("weight", 1) == 0:
            continue
        start_text = _render(tokenizer, prepared, i, add_generation_prompt=True)
        end_text = _render(tokenizer, prepared, i + 1, add_generation_prompt=False)
        for count, prefix in ((i, start_text), (i + 1, end_text)):
            if not full.startswith(prefix):
                raise ChatTemplateError(
                    f"chat template is not prefix-stable: rendering the first {count} messages "
                    "is not a prefix of the whole conversation, so assistant turns cannot be "
                    "masked reliably"
                )
        # Whitespace the template puts after the end-of-turn token is not the model's to predict.
        end = len(end_text.rstrip())
        if end <= len(start_text):
            continue
        spans.append((len(start_text), end))
    return full, spans


def _encode_full(tokenizer: Any, messages: list[Message]) -> tuple[list[int], list[int]]:
    """Untruncated ids and mask for one conversation."""
    full, spans = supervised_spans(tokenizer, messages)
    # mlx-lm's TokenizerWrapper is not callable; the HF tokenizer it wraps is.
    hf = tokenizer if callable(tokenizer) else tokenizer._tokenizer
    try:
        enc = hf(full, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # slow tokenizers have no offsets
        return _encode_by_prefixes(hf, full, spans)
    ids = [int(t) for t in enc["input_ids"]]
    offsets: list[tuple[int, int]] = [(int(a), int(b)) for a, b in enc["offset_mapping"]]
    mask = [0] * len(ids)
    k = 0
    for start, end in spans:
        while k < len(ids) and offsets[k][0] < start:
            k += 1
        while k < len(ids) and offsets[k][1] <= end:
            mask[k] = 1
            k += 1
    return ids, mask


def _encode_by_prefixes(
    hf: Any, full: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[int]]:
    """Fallback without offsets: token counts of each prefix, checked to be token prefixes."""
    ids = [int(t) for t in hf.encode(full, add_special_tokens=False)]
    mask = [0] * len(ids)
    for start, end in spans:
        bounds = []
        for cut in (start, end):
            head = [int(t) for t in hf.encode(full[:cut], add_special_tokens=False)]
            if ids[: len(head)] != head:
                raise ChatTemplateError(
                    "tokenizer merges across an assistant turn boundary; cannot mask by prefix"
                )
            bounds.append(len(head))
        for k in range(bounds[0], bounds[1]):
            mask[k] = 1
    return ids, mask


def _render(
    tokenizer: Any, prepared: Prepared, count: int | None, *, add_generation_prompt: bool
) -> str:
    return apply_template(tokenizer, prepared, count, add_generation_prompt=add_generation_prompt)


def load_pairs(path: Path) -> list[dict[str, Any]]:
    """Read `preference.jsonl`; a missing file means no pairs.

    Raises:
        BadRequest: A line is not JSON or lacks `prompt` (a message list), `chosen`, `rejected`.
    """
    if not path.exists():
        return []
    pairs = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadRequest(f"{path}:{lineno}: not JSON ({err.msg})") from err
        ok = isinstance(row, dict) and isinstance(row.get("prompt"), list)
        if not ok or not all(isinstance(row.get(k), str) for k in ("chosen", "rejected")):
            raise BadRequest(f'{path}:{lineno}: expected {{"prompt": [...], "chosen", "rejected"}}')
        pairs.append(row)
    return pairs
