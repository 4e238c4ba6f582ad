"""The MLX training loss: cross-entropy on supervised tokens, with the LM head run only there.

A transcript row is mostly context the loss ignores (system, user and tool-result tokens), yet a
plain `model(ids)` projects every position onto the whole vocabulary. For the model families
whose logits are just `head(body(ids))` this module runs the body on all positions and the head
and softmax only on the supervised ones: the same loss and gradients, with the logits tensor
(batch x length x vocab, the largest activation for real vocabularies) cut to the supervised
share. Other families take the plain path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np

# mlx-lm model families whose `Model.__call__` is exactly `head(self.model(inputs))`.
HEAD_SPLIT_TYPES = frozenset({"qwen2", "qwen3", "llama", "mistral", "phi3"})


def split_head(model: Any) -> tuple[Callable[..., Any], Callable[..., Any]] | None:
    """The body and the LM head of a model, or None when its logits are not `head(body(x))`."""
    if getattr(model, "model_type", None) not in HEAD_SPLIT_TYPES:
        return None
    body = getattr(model, "model", None)
    args = getattr(model, "args", None)
    if body is None or args is None:
        return None
    if getattr(args, "tie_word_embeddings", False):
        return body, body.embed_tokens.as_linear
    head = getattr(model, "lm_head", None)
    return (body, head) if head is not None else None


def masked_loss(model: Any, ids: mx.array, mask: mx.array) -> tuple[mx.array, mx.array]:
    """Mean cross-entropy over supervised target tokens, and how many there were."""
    weights = mask[:, 1:]
    parts = split_head(model)
    if parts is None:
        logits = model(ids[:, :-1])
        ce = nn.losses.cross_entropy(logits, ids[:, 1:]) * weights
        ntoks = weights.sum()
        return ce.astype(mx.float32).sum() / ntoks, ntoks
    body, head = parts
    hidden = body(ids[:, :-1])
    # The mask is data, not a traced value: its nonzero positions are known before the step.
    keep = mx.array(np.flatnonzero(np.asarray(weights)).astype(np.uint32))
    picked = hidden.reshape(-1, hidden.shape[-1])[keep]
    kept_weights = weights.reshape(-1)[keep]
    ce = nn.losses.cross_entropy(head(picked), ids[:, 1:].reshape(-1)[keep]) * kept_weights
    ntoks = kept_weights.sum()
    return ce.astype(mx.float32).sum() / ntoks, ntoks


def evaluate(model: Any, batches: Any) -> float:
    """Token-weighted validation loss over every batch of `batches.in_order()`."""
    model.eval()
    total, count = mx.array(0.0), mx.array(0.0)
    for ids, mask, _ in batches.in_order():
        loss, ntoks = masked_loss(model, ids, mask)
        total = total + loss * ntoks
        count = count + ntoks
        mx.eval(total, count)
    model.train()
    return float((total / count).item())  # type: ignore[arg-type]
