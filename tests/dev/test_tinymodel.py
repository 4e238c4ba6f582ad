"""Tests for sam_brain.dev.tinymodel: determinism, both loaders, tokenizer and logit agreement."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from sam_brain.dev.tinymodel import DEFAULT_SYSTEM, build_tiny_model
from sam_brain.errors import BadRequest
from sam_brain.render import render

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXTS = [
    "Hello world! It's a tiny model.",
    "def f(x):\n    return x * 2  # double\n",
    "$ git status\nOn branch main\n\n",
    "café naïve 東京 😀 — “quoted”",
    "  leading spaces\ttabs\r\nand CRLF 12345 3.14",
    "<|im_start|>user\nhi<|im_end|>\n<tool_call>\n{}\n</tool_call>",
]

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "List the files."},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"type": "function", "function": {"name": "Bash", "arguments": {"command": "ls"}}}
        ],
    },
    {"role": "tool", "content": "a.py\nb.py"},
    {"role": "assistant", "content": "Two files: a.py and b.py."},
    {"role": "user", "content": "Thanks."},
]

EXPECTED_CHAT = (
    "<|im_start|>system\nBe brief.<|im_end|>\n"
    "<|im_start|>user\nList the files.<|im_end|>\n"
    "<|im_start|>assistant\nLet me look.\n"
    '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\na.py\nb.py\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\nTwo files: a.py and b.py.<|im_end|>\n"
    "<|im_start|>user\nThanks.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def _hashes(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def mlx_loaded(model_dir: Path) -> Any:
    import mlx_lm

    return mlx_lm.load(str(model_dir))


def test_build_is_deterministic_and_seeded(tmp_path: Path, model_dir: Path) -> None:
    again = _hashes(build_tiny_model(tmp_path / "again"))
    assert again == _hashes(model_dir)
    assert set(again) == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    other = _hashes(build_tiny_model(tmp_path / "other", seed=1))
    assert other["model.safetensors"] != again["model.safetensors"]
    assert other["tokenizer.json"] == again["tokenizer.json"]


def test_config_and_weights(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "qwen2"
    assert config["rope_theta"] == 1000000.0
    assert config["tie_word_embeddings"] is True
    assert config["torch_dtype"] == "float32"
    weights = load_file(str(model_dir / "model.safetensors"))
    assert "lm_head.weight" not in weights
    assert weights["model.embed_tokens.weight"].shape == (4096, 128)
    assert weights["model.layers.3.self_attn.k_proj.weight"].shape == (64, 128)
    assert weights["model.layers.0.self_attn.q_proj.bias"].shape == (128,)
    assert weights["model.layers.0.mlp.gate_proj.weight"].shape == (384, 128)
    assert len(weights) == 1 + 4 * 12 + 1
    n_params = sum(w.size for w in weights.values())
    assert 1_200_000 < n_params < 1_400_000
    std = float(weights["model.embed_tokens.weight"].std())
    assert abs(std - 0.02) < 0.001
    assert np.all(weights["model.norm.weight"] == 1.0)


def test_custom_shape(tmp_path: Path) -> None:
    shape = {"hidden_size": 64, "num_layers": 2, "vocab_size": 1024, "num_heads": 2}
    path = build_tiny_model(tmp_path / "m", num_kv_heads=1, intermediate_size=100, **shape)
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        64,
        2,
        1024,
    )
    weights = load_file(str(path / "model.safetensors"))
    assert weights["model.layers.1.mlp.down_proj.weight"].shape == (64, 100)
    tokenizer = json.loads((path / "tokenizer.json").read_text())
    assert len(tokenizer["model"]["vocab"]) + 2 == 1024  # +2 plain tool-call tokens


@pytest.mark.parametrize(
    "kwargs",
    [
        {"hidden_size": 100, "num_heads": 3},
        {"num_heads": 4, "num_kv_heads": 3},
        {"vocab_size": 100},
    ],
)
def test_inconsistent_shapes_are_rejected(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(BadRequest, match="tiny model"):
        build_tiny_model(tmp_path / "bad", **kwargs)


def test_hf_tokenizer_specials_and_roundtrip(hf_tokenizer: Any) -> None:
    assert len(hf_tokenizer) == 4096
    assert hf_tokenizer.eos_token == "<|im_end|>"
    assert hf_tokenizer.pad_token == "<|endoftext|>"
    assert hf_tokenizer.bos_token is None
    ids = hf_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert ids == [0, 1, 2]
    assert hf_tokenizer.encode("<|im_start|>user")[0] == 1
    for text in TEXTS:
        assert hf_tokenizer.decode(hf_tokenizer.encode(text)) == text
    # A trained tokenizer compresses its own kind of text well below one token per byte.
    sample = "def load_config(path):\n    return json.loads(path.read_text())\n"
    assert len(hf_tokenizer.encode(sample)) < len(sample) / 2


def test_chat_template(hf_tokenizer: Any) -> None:
    text = hf_tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    assert text == EXPECTED_CHAT
    plain = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=False
    )
    assert plain == (
        f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
    )
    tools = [{"type": "function", "function": {"name": "Bash", "parameters": {}}}]
    with_tools = hf_tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tools=tools, tokenize=False
    )
    assert "<tools>\n" + json.dumps(tools[0]) + "\n</tools>" in with_tools
    string_args: list[dict[str, Any]] = [
        {"role": "user", "content": "go"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "Read", "arguments": '{"path": "x"}'}}],
        },
    ]
    # Qwen2.5's real template escapes string arguments (why sam_brain.render parses them first).
    rendered = hf_tokenizer.apply_chat_template(string_args, tokenize=False)
    assert '{"name": "Read", "arguments": "{\\"path\\": \\"x\\"}"}' in rendered
    native = render(hf_tokenizer, string_args)
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "Read", "arguments": {"path": "x"}}' in native
    )


def test_mlx_and_hf_tokenizers_agree(hf_tokenizer: Any, mlx_loaded: Any) -> None:
    _, mlx_tokenizer = mlx_loaded
    for text in TEXTS:
        assert mlx_tokenizer.encode(text) == hf_tokenizer.encode(text)
    mlx_chat = mlx_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    hf_chat = hf_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    # transformers 5 returns a BatchEncoding here; older versions a plain list.
    hf_ids = hf_chat["input_ids"] if hasattr(hf_chat, "keys") else hf_chat
    mlx_ids = mlx_chat["input_ids"] if hasattr(mlx_chat, "keys") else mlx_chat
    assert list(mlx_ids) == list(hf_ids)
    assert hf_tokenizer.decode(list(hf_ids)) == EXPECTED_CHAT
    assert mlx_tokenizer.eos_token_id == 2
    assert 2 in mlx_tokenizer.eos_token_ids


def test_mlx_and_torch_logits_agree(model_dir: Path, hf_tokenizer: Any, mlx_loaded: Any) -> None:
    import mlx.core as mx
    import torch
    from transformers import AutoModelForCausalLM

    mlx_model, _ = mlx_loaded
    torch_model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch_model.training  # from_pretrained returns the model in eval mode
    assert torch_model.config.rope_parameters["rope_theta"] == 1000000.0
    ids = hf_tokenizer.encode(EXPECTED_CHAT)
    assert len(ids) > 40
    with torch.no_grad():
        torch_logits = torch_model(torch.tensor([ids])).logits[0].numpy()
    mlx_logits = np.array(mlx_model(mx.array([ids]))[0].astype(mx.float32))
    assert mlx_logits.shape == torch_logits.shape == (len(ids), 4096)
    assert float(np.abs(mlx_logits - torch_logits).max()) < 1e-4
    # Random weights still give position-dependent, non-constant outputs.
    assert float(torch_logits.std()) > 1e-3
