"""Data for the training benchmark: the length fit, the datasets, token counts and FLOPs.

`bench/train.py` writes a uniform and a length-skewed dataset of `{"messages"}` rows (lengths from
a log-normal fitted to the samples the sessions collector makes of ../shared's transcripts),
counts each row's tokens as our backends and mlx-lm encode them, and credits each side with the
LoRA training FLOPs of the rows it processed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# Log-normal of sample lengths (tokens of the tiny tokenizer) fitted to the fixtures' samples;
# used when ../shared is absent. Refitted at run time otherwise.
FALLBACK_FIT = (7.30, 2.43)


def fixture_fit(tokenizer: Any) -> tuple[float, float, int]:
    """(mu, sigma, n) of log token lengths of the samples the sessions collector makes."""
    fixtures = SHARED / "fixtures" / "claude-sessions"
    if not fixtures.is_dir():
        return (*FALLBACK_FIT, 0)
    from collectors.sessions import SessionCollector

    class NoCursors:
        def get_cursor(self, key: str) -> str | None:
            return None

    samples = SessionCollector([fixtures], quiet_minutes=0).collect(NoCursors()).samples
    logs = [math.log(max(1, len(tokenizer.encode(s.text()).ids))) for s in samples]
    if len(logs) < 2:
        return (*FALLBACK_FIT, len(logs))
    mu = sum(logs) / len(logs)
    sigma = math.sqrt(sum((x - mu) ** 2 for x in logs) / (len(logs) - 1))
    return mu, sigma, len(logs)


def write_dataset(base: Path, out: Path, lengths: list[int], seed: int) -> None:
    """`train.jsonl` with one two-turn conversation per target length, `valid.jsonl` short rows."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    corpus = (REPO / "sam_brain" / "dev" / "data" / "tiny_corpus.txt").read_text(encoding="utf-8")
    ids = tok.encode(corpus).ids
    rng = np.random.default_rng(seed)
    overhead = 24  # system prompt and role markers of the chat template

    def text(n: int) -> str:
        start = int(rng.integers(0, len(ids) - n - 1))
        return str(tok.decode(ids[start : start + n]))

    def row(total: int) -> str:
        content = max(4, total - overhead)
        user = max(2, content // 4)
        messages = [
            {"role": "user", "content": text(user)},
            {"role": "assistant", "content": text(content - user)},
        ]
        return json.dumps({"messages": messages})

    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(row(n) + "\n" for n in lengths), encoding="utf-8")
    short = min(lengths)
    (out / "valid.jsonl").write_text("".join(row(short) + "\n" for _ in range(4)), "utf-8")


def encoded_lengths(base: Path, data: Path, max_seq: int) -> tuple[list[int], list[int]]:
    """Token lengths of the training rows as our backends and as mlx-lm encode them."""
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.tuner.datasets import ChatDataset

    from sam_brain.masking import encode_rows, load_rows

    tokenizer: Any = load_tokenizer(base)
    rows = load_rows(data / "train.jsonl")
    ours = [len(ids) for ids, _ in encode_rows(tokenizer, rows, max_seq)[0]]
    records: Any = [{"messages": r} for r in rows]
    ds: Any = ChatDataset(records, tokenizer, mask_prompt=True)
    theirs = [min(len(ds.process(rec)[0]), max_seq) for rec in records]
    return ours, theirs


def train_flops(lengths: list[int], params: int, layers: int, hidden: int) -> float:
    """LoRA training FLOPs of one pass over rows: 4 x params per token plus causal attention.

    Attention per layer: QK^T and AV cost 4*hidden*t forward at position t, and backward needs
    twice that (input gradients only), so 12*hidden*t per token.
    """
    return sum(4.0 * params * n + 12.0 * layers * hidden * n * (n + 1) / 2 for n in lengths)
