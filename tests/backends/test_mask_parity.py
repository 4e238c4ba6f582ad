"""Both backends supervise the same tokens: transformers' and mlx-lm's tokenizers agree exactly.

The CUDA backend encodes with `AutoTokenizer`, the MLX backend with the tokenizer `mlx_lm.load`
returns; `sam_brain.masking.encode_chat` must give identical ids and masks for both, token by
token, on multi-turn conversations with tool calls and tool results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sam_brain.masking import encode_chat

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "read_file", "arguments": '{"path": "config.toml"}'},
}
SAMPLES: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "You are SAM."},
        {"role": "user", "content": "Read the config please."},
        {"role": "assistant", "content": "Reading it now.", "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "[train]\nrank = 8"},
        {"role": "assistant", "content": "The rank is 8."},
        {"role": "user", "content": "Thanks, and the alpha? ü ß 東京 🚀"},
        {"role": "assistant", "content": "Alpha is not set, so it defaults to 16."},
    ],
    [
        {"role": "user", "content": "Run the tests twice."},
        {"role": "assistant", "content": "", "tool_calls": [CALL, {**CALL, "id": "call_2"}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "3 passed"},
        {"role": "tool", "tool_call_id": "call_2", "content": "3 passed\n\n  indented\ttab"},
        {"role": "assistant", "content": "Both runs passed:\n```\n3 passed\n```"},
    ],
    [
        {"role": "user", "content": "One word?"},
        {"role": "assistant", "content": "Yes."},
    ],
]


@pytest.fixture(scope="module")
def tokenizers(tiny_model: Path) -> tuple[Any, Any]:
    pytest.importorskip("mlx_lm")
    from mlx_lm import load
    from transformers import AutoTokenizer

    mlx_tokenizer = load(str(tiny_model))[1]
    return AutoTokenizer.from_pretrained(str(tiny_model)), mlx_tokenizer


@pytest.mark.parametrize("index", range(len(SAMPLES)))
def test_ids_and_masks_identical_token_by_token(tokenizers: tuple[Any, Any], index: int) -> None:
    hf, mlx = tokenizers
    hf_ids, hf_mask = encode_chat(hf, SAMPLES[index], 4096)
    mlx_ids, mlx_mask = encode_chat(mlx, SAMPLES[index], 4096)

    assert len(hf_ids) == len(mlx_ids) == len(hf_mask) == len(mlx_mask)
    for k, (a, b, ma, mb) in enumerate(zip(hf_ids, mlx_ids, hf_mask, mlx_mask, strict=True)):
        assert (a, ma) == (b, mb), f"token {k}: transformers {(a, ma)} vs mlx-lm {(b, mb)}"
    # Both kinds of token are present, so the comparison covers masked and supervised spans.
    assert 0 < sum(hf_mask) < len(hf_mask)


def test_supervised_text_is_exactly_the_assistant_turns(tokenizers: tuple[Any, Any]) -> None:
    hf, _ = tokenizers
    ids, mask = encode_chat(hf, SAMPLES[2], 4096)
    supervised = hf.decode([t for t, m in zip(ids, mask, strict=True) if m])
    assert supervised == "Yes.<|im_end|>"
