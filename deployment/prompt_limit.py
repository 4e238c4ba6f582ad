"""Render and count a chat prompt before it reaches the model; refuse it when it is too long.

`PromptLimit` renders a request's messages as training does (`sam_brain.render`), so a
`ChatTemplateError` (tool-call arguments the template cannot take) is the client's 400, and
counts its tokens with a tokenizer of its own (loaded once from the base model's folder, used on
one thread at a time: the chat worker keeps the model's). Counting is bounded by the limit, not by
the prompt: a text whose UTF-8 size could exceed the limit is tokenized in `CHUNK_CHARS` slices
and refused as soon as the slices pass it, so a 3 MB prompt costs a few slices, not a full
tokenization (seconds and hundreds of MB). Only a prompt within the limit is tokenized whole,
and those ids go to generation. The limit is `deployment.max_prompt_tokens`, never more than
the model's context (`max_position_embeddings`), which must also hold the answer's budget.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest, SamBrainError
from sam_brain.protocols import Message
from sam_brain.render import ChatTemplateError, render

CHUNK_CHARS = 16384
SLACK_PER_CUT = 8  # tokens a cut between slices can add: the refusal stays exact near the limit


class PromptTooLong(BadRequest):
    """The rendered prompt is over the server's token limit or the model's context."""


def model_context(model_dir: str | Path) -> int | None:
    """The base model's context length from its `config.json` (None when it names none)."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for doc in (config, config.get("text_config") or {}):
        value = doc.get("max_position_embeddings")
        if isinstance(value, int) and value > 0:
            return value
    return None


def capped_ids(tokenizer: Any, text: str, cap: int) -> list[int]:
    """Token ids of `text` (no special tokens added), refused once they exceed `cap`.

    Raises:
        PromptTooLong: With the number of tokens counted before refusing.
    """
    if len(text.encode("utf-8")) > cap:  # a token covers at least one byte: it may be over
        counted = 0
        for cuts, start in enumerate(range(0, len(text), CHUNK_CHARS)):
            piece = text[start : start + CHUNK_CHARS]
            counted += len(tokenizer.encode(piece, add_special_tokens=False))
            if counted - SLACK_PER_CUT * cuts > cap:
                raise PromptTooLong(
                    f"the prompt is over {cap} tokens (at least {counted - SLACK_PER_CUT * cuts}"
                    f" counted in its first {start + len(piece)} characters)"
                )
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    if len(ids) > cap:
        raise PromptTooLong(f"the prompt is {len(ids)} tokens, over {cap}")
    return ids


class PromptLimit:
    """Renders and counts prompts for one base model, with a token limit."""

    def __init__(self, base_model: str | Path, max_prompt_tokens: int = 0) -> None:
        """Args:
        base_model: The base model's folder (tokenizer and `config.json`).
        max_prompt_tokens: Largest prompt accepted; 0 means the model's context.
        """
        self.base_model = str(base_model)
        self.max_prompt_tokens = max_prompt_tokens
        self._tokenizer: Any = None
        self._context: int | None = None
        self._lock = threading.Lock()  # HF tokenizers are not safe to share across threads

    def _load(self) -> Any:
        if self._tokenizer is None:
            from mlx_lm import utils

            load_tokenizer: Any = utils.load_tokenizer  # untyped in mlx-lm
            try:
                self._tokenizer = load_tokenizer(Path(self.base_model))
            except (OSError, ValueError) as err:
                raise SamBrainError(
                    f"cannot load the tokenizer of {self.base_model}: {err}"
                ) from err
            self._context = model_context(self.base_model)
        return self._tokenizer

    def limit(self) -> int:
        """The largest prompt accepted, in tokens (after the tokenizer is loaded)."""
        context = self._context or 0
        if self.max_prompt_tokens > 0:
            return min(self.max_prompt_tokens, context) if context else self.max_prompt_tokens
        return context or 2**31

    def prompt_ids(self, messages: list[Message], max_tokens: int) -> list[int]:
        """The generation prompt's ids for `messages`, checked against the limits.

        Raises:
            BadRequest: The template cannot render the messages, or the prompt is too long
                (`PromptTooLong`) for the limit or, with `max_tokens`, for the context.
        """
        with self._lock:
            tokenizer = self._load()
            try:
                text = render(tokenizer, messages, add_generation_prompt=True)
            except ChatTemplateError as err:
                raise BadRequest(f"the messages cannot be rendered: {err}") from err
            limit = self.limit()
            try:
                ids = capped_ids(tokenizer, text, limit)
            except PromptTooLong as err:
                raise PromptTooLong(
                    f"{err}; prompts are limited to {limit} tokens"
                    " (deployment.max_prompt_tokens and the model's context)"
                ) from None
        context = self._context
        if context and len(ids) + max_tokens > context:
            raise PromptTooLong(
                f"the prompt ({len(ids)} tokens) plus max_tokens ({max_tokens}) exceeds the"
                f" model's context of {context} tokens"
            )
        return ids
