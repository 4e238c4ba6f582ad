"""Token counts of chat messages for windowing: the base model's own tokenizer when it is on disk.

Windows are sized in the tokens the trainer will see (`training` profile `max_seq_length`), so
the counter is the configured base model's `tokenizer.json`, loaded with `tokenizers` (no
transformers import) and found offline only: a local directory, or the Hugging Face cache, never
a download (ingest must not wait on the network). Without it, `windowing.estimate_tokens` counts
conservatively (3 characters a token). A message's count is its content and tool calls encoded,
plus `MESSAGE_OVERHEAD` template tokens; the `tools=` block is counted (`windowing.tools_tokens`).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam_brain.config import Config
from sam_brain.pipeline.windowing import (
    MESSAGE_OVERHEAD,
    TokenCount,
    estimate_tokens,
    split_rows,
    tools_tokens,
)
from sam_brain.protocols import Message

log = logging.getLogger(__name__)

# Share of `max_seq_length` kept free for what the chat template adds beyond the messages (a
# system prompt it inserts, a tool-definitions block) and for tokenizer merges across messages.
TEMPLATE_RESERVE = 0.10


def window_tokens(config: Config) -> int:
    """The token budget of one training window: the profile's length less the reserve.

    Capped by `pipeline.max_tokens`, the validator's limit, so no window is dropped as too long.
    """
    length = int(config.profile().max_seq_length * (1 - TEMPLATE_RESERVE))
    return max(1, min(length, config.pipeline.max_tokens))


def local_model_dir(ref: str) -> Path | None:
    """The model directory for `ref` if it is already on this machine (never downloads)."""
    local = Path(ref).expanduser()
    if local.is_dir():
        return local
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, allow_patterns=["tokenizer*"], local_files_only=True))
    except Exception:  # not cached, no hub library, a bad id: the estimate will do
        return None


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


class TokenizerCount:
    """Counts messages with a `tokenizers.Tokenizer`; `many` encodes a batch on all cores."""

    def __init__(self, tok: Any) -> None:
        self.tok = tok

    @staticmethod
    def _text(message: Message) -> str:
        parts = [str(message.get("content") or "")]
        for call in message.get("tool_calls") or ():
            fn = call.get("function") or {}
            parts.append(json.dumps({"name": fn.get("name"), "arguments": fn.get("arguments")}))
        return "\n".join(parts)

    def __call__(self, message: Message) -> int:
        ids = self.tok.encode(self._text(message), add_special_tokens=False).ids
        return len(ids) + MESSAGE_OVERHEAD

    def many(self, messages: Sequence[Message]) -> list[int]:
        texts = [self._text(m) for m in messages]
        encoded = self.tok.encode_batch(texts, add_special_tokens=False)
        return [len(e.ids) + MESSAGE_OVERHEAD for e in encoded]


def tokenizer_counter(model_dir: Path) -> TokenCount | None:
    """A message counter from `model_dir/tokenizer.json` (None when there is none)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    try:
        return TokenizerCount(_tokenizer(str(path)))
    except Exception as err:  # a damaged file must not stop ingest
        log.warning("cannot load %s (%s); token counts are estimated", path, err)
        return None


def message_counter(config: Config) -> TokenCount:
    """The base model's tokenizer counter when on disk, else the conservative estimate."""
    t = config.training
    order = [t.cuda_base_model, t.mlx_base_model]
    if t.backend == "mlx":
        order.reverse()
    for ref in order:
        model_dir = local_model_dir(ref)
        count = tokenizer_counter(model_dir) if model_dir else None
        if count is not None:
            return count
    return estimate_tokens


def fit_rows(
    config: Config, by_split: dict[str, list[dict[str, Any]]], base: Path | None
) -> dict[str, int]:
    """Re-cut, in place, rows longer than the profile's length; drop those that cannot fit.

    Counted with the base model's tokenizer (`base`), else the estimate. Returns how many rows
    were cut again (`resplit`) and how many were left out (`too_long`).
    """
    count = (tokenizer_counter(base) if base else None) or estimate_tokens
    budget = int(config.profile().max_seq_length * (1 - TEMPLATE_RESERVE))
    stats = {"resplit": 0, "too_long": 0}
    for split, rows in by_split.items():
        cut, n = split_rows([r["messages"] for r in rows], budget, count)
        stats["resplit"] += n
        kept = [m for m in cut if sum(map(count, m)) + tools_tokens(m, count) <= budget]
        stats["too_long"] += len(cut) - len(kept)
        by_split[split] = [{"messages": m} for m in kept]
    return stats
