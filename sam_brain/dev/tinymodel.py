"""Build a tiny, random-weight Qwen2-style model directory offline, for tests and the demo.

`build_tiny_model(path)` trains a byte-level BPE tokenizer on the corpus shipped in
`sam_brain/dev/data/tiny_corpus.txt` (with Qwen2's exact pre-tokenizer, because transformers rebuilds
that pipeline for Qwen2 and ids would differ otherwise), writes Qwen2.5-Instruct's real chat template,
a Qwen2 `config.json` and seeded random weights in `model.safetensors` under the Hugging Face
parameter names. The result loads with both `mlx_lm.load` and transformers, and the same arguments
always produce byte-identical files.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from sam_brain.errors import BadRequest
from sam_brain.masking import QWEN2_SPLIT_REGEX

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Plain added tokens, as Qwen2.5 has them, so tool-call parsers find their markers in the vocab.
TOOL_TOKENS = ("<tool_call>", "</tool_call>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
# The system prompt the template inserts when a conversation has none.
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ROPE_THETA = 1000000.0
MAX_POSITIONS = 32768

# Qwen2.5-Instruct's real template, byte for byte: a look-alike once hid that string arguments
# render as escaped strings (`tool_call.arguments | tojson`); see tests/fixtures/chat_templates.
CHAT_TEMPLATE = (
    resources.files("sam_brain.dev").joinpath("data/qwen2_5_instruct.jinja").read_text("utf-8")
)


def build_tiny_model(
    path: Path | str,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    vocab_size: int = 4096,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int | None = None,
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen2-style model (tokenizer, configs, random weights) into `path`.

    Args:
        path: Directory to create or overwrite the model files in.
        hidden_size: Model width; must be divisible by `num_heads`.
        num_layers: Number of decoder layers.
        vocab_size: Embedding rows; the trained tokenizer has at most this many tokens.
        num_heads: Attention heads.
        num_kv_heads: Key/value heads (grouped-query attention); must divide `num_heads`.
        intermediate_size: MLP width; defaults to `3 * hidden_size`.
        seed: Seed for the weights; the same arguments give byte-identical files.

    Returns:
        The model directory as a `Path`.

    Raises:
        BadRequest: The shape arguments are inconsistent.
    """
    inter = intermediate_size if intermediate_size is not None else 3 * hidden_size
    _check_shapes(hidden_size, num_layers, vocab_size, num_heads, num_kv_heads, inter)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _train_tokenizer(vocab_size)
    ids = {tok: _token_id(tokenizer, tok) for tok in (*SPECIAL_TOKENS, *TOOL_TOKENS)}
    tokenizer.save(str(out / "tokenizer.json"), pretty=True)
    _write_json(out / "tokenizer_config.json", _tokenizer_config(ids))
    _write_json(
        out / "special_tokens_map.json",
        {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "additional_special_tokens": []},
    )

    config = _model_config(hidden_size, num_layers, vocab_size, num_heads, num_kv_heads, inter)
    config["bos_token_id"] = ids[PAD_TOKEN]
    config["eos_token_id"] = ids[EOS_TOKEN]
    _write_json(out / "config.json", config)
    _write_json(
        out / "generation_config.json",
        {
            "bos_token_id": ids[PAD_TOKEN],
            "eos_token_id": [ids[EOS_TOKEN], ids[PAD_TOKEN]],
            "pad_token_id": ids[PAD_TOKEN],
            "do_sample": False,
        },
    )
    weights = _random_weights(config, seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _check_shapes(
    hidden: int, layers: int, vocab: int, heads: int, kv_heads: int, inter: int
) -> None:
    problems = []
    if min(hidden, layers, heads, kv_heads, inter) < 1:
        problems.append("sizes must be positive")
    elif hidden % heads:
        problems.append(f"hidden_size {hidden} is not divisible by num_heads {heads}")
    elif heads % kv_heads:
        problems.append(f"num_heads {heads} is not divisible by num_kv_heads {kv_heads}")
    elif (hidden // heads) % 2:
        problems.append(f"head dim {hidden // heads} must be even for rotary embeddings")
    floor = 256 + len(SPECIAL_TOKENS) + len(TOOL_TOKENS)
    if vocab < floor:
        problems.append(f"vocab_size {vocab} is below the byte alphabet plus specials ({floor})")
    if problems:
        raise BadRequest("tiny model: " + "; ".join(problems))


def _train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE with Qwen2's normalizer, split regex and decoder."""
    tok = Tokenizer(BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        # Leave room for the tool tokens so every id fits in the embedding table.
        vocab_size=vocab_size - len(TOOL_TOKENS),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = resources.files("sam_brain.dev").joinpath("data/tiny_corpus.txt")
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    tok.train_from_iterator(lines, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TOOL_TOKENS])
    return tok


def _token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:  # cannot happen unless the tokenizers library changes behaviour
        raise BadRequest(f"tiny model: tokenizer lost the token {token!r}")
    return int(token_id)


def _tokenizer_config(ids: dict[str, int]) -> dict[str, Any]:
    added = {
        str(ids[tok]): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": tok in SPECIAL_TOKENS,
        }
        for tok in (*SPECIAL_TOKENS, *TOOL_TOKENS)
    }
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS_TOKEN,
        "errors": "replace",
        "model_max_length": MAX_POSITIONS,
        "pad_token": PAD_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _model_config(
    hidden: int, layers: int, vocab: int, heads: int, kv_heads: int, inter: int
) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": layers,
        "model_type": "qwen2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-6,
        # Explicit: mlx-lm and transformers disagree on the default (1e6 vs 1e4).
        "rope_scaling": None,
        "rope_theta": ROPE_THETA,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": vocab,
    }


def _random_weights(config: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Normal(0, 0.02) weights and q/k/v biases, ones for norms, in a fixed draw order."""
    rng = np.random.default_rng(seed)
    hidden = int(config["hidden_size"])
    head_dim = hidden // int(config["num_attention_heads"])
    q_dim = int(config["num_attention_heads"]) * head_dim
    kv_dim = int(config["num_key_value_heads"]) * head_dim
    inter = int(config["intermediate_size"])

    def normal(*shape: int) -> np.ndarray:
        return rng.normal(0.0, 0.02, size=shape).astype(np.float32)

    weights = {"model.embed_tokens.weight": normal(int(config["vocab_size"]), hidden)}
    for i in range(int(config["num_hidden_layers"])):
        p = f"model.layers.{i}."
        weights[p + "self_attn.q_proj.weight"] = normal(q_dim, hidden)
        weights[p + "self_attn.q_proj.bias"] = normal(q_dim)
        weights[p + "self_attn.k_proj.weight"] = normal(kv_dim, hidden)
        weights[p + "self_attn.k_proj.bias"] = normal(kv_dim)
        weights[p + "self_attn.v_proj.weight"] = normal(kv_dim, hidden)
        weights[p + "self_attn.v_proj.bias"] = normal(kv_dim)
        weights[p + "self_attn.o_proj.weight"] = normal(hidden, q_dim)
        weights[p + "mlp.gate_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.up_proj.weight"] = normal(inter, hidden)
        weights[p + "mlp.down_proj.weight"] = normal(hidden, inter)
        weights[p + "input_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
        weights[p + "post_attention_layernorm.weight"] = np.ones(hidden, dtype=np.float32)
    weights["model.norm.weight"] = np.ones(hidden, dtype=np.float32)
    return weights


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
