"""Loss masks: every assistant turn supervised, everything else not, same for both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sam_brain.errors import BadRequest
from sam_brain.masking import (
    encode_chat,
    encode_rows,
    fully_masked,
    load_rows,
)
from sam_brain.render import ChatTemplateError, native_messages
from sam_brain.tool_schemas import tool_definitions

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are SAM."},
    {"role": "user", "content": "Read the config please."},
    {
        "role": "assistant",
        "content": "Reading it now.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "read_file", "arguments": '{"path": "config.toml"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "[train]\nrank = 8"},
    {"role": "assistant", "content": "The rank is 8."},
    {"role": "user", "content": "Thanks, and the alpha?"},
    {"role": "assistant", "content": "Alpha is not set, so it defaults to 16."},
]

EXPECTED_SPANS = [
    'Reading it now.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "config.toml"}}'
    "\n</tool_call><|im_end|>",
    "The rank is 8.<|im_end|>",
    "Alpha is not set, so it defaults to 16.<|im_end|>",
]


@pytest.fixture(scope="module")
def tiny_dir(tiny_model: Path) -> Path:
    return tiny_model


@pytest.fixture(scope="module")
def tokenizer(tiny_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_dir))


def _runs(ids: list[int], mask: list[int], want: int) -> list[list[int]]:
    """Maximal runs of consecutive tokens whose mask equals `want`."""
    runs: list[list[int]] = []
    prev = None
    for tok, m in zip(ids, mask, strict=True):
        if m == want:
            if prev != want:
                runs.append([])
            runs[-1].append(tok)
        prev = m
    return runs


def test_every_assistant_turn_is_supervised_exactly(tokenizer: Any) -> None:
    ids, mask = encode_chat(tokenizer, CONVERSATION, max_length=4096)

    assert len(ids) == len(mask)
    # The template's own text, given the sample's tool definitions and object arguments.
    assert ids == tokenizer.apply_chat_template(
        native_messages(CONVERSATION),
        tools=tool_definitions(CONVERSATION),
        tokenize=True,
        return_dict=False,
    )
    spans = [tokenizer.decode(run) for run in _runs(ids, mask, 1)]
    assert spans == EXPECTED_SPANS


def test_tool_call_only_turn_is_supervised_from_the_first_token(tokenizer: Any) -> None:
    call = {"type": "function", "function": {"name": "ls", "arguments": {"path": "."}}}
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "List files."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "content": "a.py"},
        {"role": "assistant", "content": "One file: a.py"},
    ]
    ids, mask = encode_chat(tokenizer, messages, max_length=4096)

    assert [tokenizer.decode(run) for run in _runs(ids, mask, 1)] == [
        '<tool_call>\n{"name": "ls", "arguments": {"path": "."}}\n</tool_call><|im_end|>',
        "One file: a.py<|im_end|>",
    ]


def test_prompt_headers_and_tool_results_are_not_supervised(tokenizer: Any) -> None:
    ids, mask = encode_chat(tokenizer, CONVERSATION, max_length=4096)

    unsupervised = "".join(tokenizer.decode(run) for run in _runs(ids, mask, 0))
    assert unsupervised.count("<|im_start|>assistant\n") == 3
    assert "[train]\nrank = 8" in unsupervised
    assert "Read the config please." in unsupervised
    assert "You are SAM." in unsupervised
    # The newline after each closing <|im_end|> belongs to the template, not the model.
    ends = [k for k in range(len(ids) - 1) if mask[k] == 1 and mask[k + 1] == 0]
    assert len(ends) == 3
    assert [tokenizer.decode(ids[k : k + 2]) for k in ends] == ["<|im_end|>\n"] * 3


def test_mlx_wrapper_and_hf_tokenizer_give_identical_masks(tiny_dir: Path, tokenizer: Any) -> None:
    from mlx_lm.tokenizer_utils import load as load_mlx_tokenizer

    wrapper = load_mlx_tokenizer(tiny_dir)

    assert encode_chat(wrapper, CONVERSATION, 4096) == encode_chat(tokenizer, CONVERSATION, 4096)


def test_fallback_without_offsets_matches(tokenizer: Any) -> None:
    class NoOffsets:
        """A tokenizer whose __call__ has no offsets, like a slow HF tokenizer."""

        def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
            return tokenizer.apply_chat_template(*args, **kwargs)

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise NotImplementedError("return_offsets_mapping is not available")

    assert encode_chat(NoOffsets(), CONVERSATION, 4096) == encode_chat(
        tokenizer, CONVERSATION, 4096
    )


def test_truncation_cuts_the_tail_and_is_counted(tokenizer: Any) -> None:
    full_ids, full_mask = encode_chat(tokenizer, CONVERSATION, 4096)
    cut = len(full_ids) - 5

    ids, mask = encode_chat(tokenizer, CONVERSATION, cut)
    assert (ids, mask) == (full_ids[:cut], full_mask[:cut])

    kept, stats = encode_rows(tokenizer, [CONVERSATION, CONVERSATION[:5]], cut)
    assert stats.rows == 2
    assert stats.kept == 2
    assert stats.truncated == 1
    assert stats.tokens == len(ids) + len(kept[1][0])
    assert stats.supervised_tokens == sum(mask) + sum(kept[1][1])


def test_rows_without_supervised_tokens_are_dropped_and_counted(tokenizer: Any) -> None:
    no_assistant = CONVERSATION[:2]
    # Truncation before the first assistant token leaves nothing to learn from.
    first = encode_chat(tokenizer, CONVERSATION, 4096)[1].index(1)

    kept, stats = encode_rows(tokenizer, [no_assistant, CONVERSATION, CONVERSATION], first)

    assert fully_masked(encode_chat(tokenizer, no_assistant, 4096)[1])
    assert kept == []
    assert (stats.rows, stats.kept, stats.fully_masked, stats.truncated) == (3, 0, 3, 2)


def test_template_that_is_not_prefix_stable_is_refused(tiny_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    # Like Qwen3's reasoning stripping: earlier assistant turns render differently from the last.
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{% if m.role == 'assistant' and not loop.last %}[old]{% else %}{{ m.content }}{% endif %}"
        "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ChatTemplateError, match="prefix-stable"):
        encode_chat(tok, CONVERSATION[:5], 4096)


def test_load_rows_reads_messages_and_rejects_bad_lines(tmp_path: Path) -> None:
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"messages": CONVERSATION}) + "\n\n", encoding="utf-8")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no messages"}\n', encoding="utf-8")

    assert load_rows(good) == [CONVERSATION]
    assert load_rows(tmp_path / "missing.jsonl") == []
    with pytest.raises(BadRequest, match=r"bad\.jsonl:1"):
        load_rows(bad)
