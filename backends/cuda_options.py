"""The CUDA backend's view of a profile: checked options, the model's shape, LoRA config, schedule.

`read_shape` instantiates the base model on torch's meta device (no weights, no memory) to learn
its layer count and the linear layers of a block, so `check_options` can refuse a `lora_keys`
entry or `num_layers` the model does not have before anything is loaded, and `estimate_memory_mb`
can size the run. Everything the profile asks for is either honoured or named in the refusal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, cast

import torch

from backends.adapter_format import peft_target_modules
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable


@dataclass
class Options:
    """The profile's fields, checked, plus early-stopping patience."""

    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_keys: list[str]
    num_layers: int
    batch_size: int
    grad_accum: int
    max_seq_length: int
    grad_checkpoint: bool
    learning_rate: float
    epochs: float
    max_steps: int
    eval_every: int
    save_every: int
    patience: int = 3


@dataclass
class Shape:
    """What the options are checked against, read from the model config on the meta device."""

    layers: int
    hidden: int
    vocab: int
    params: int
    layers_pattern: str  # the block list's attribute name, e.g. "layers"
    block_linears: dict[str, tuple[int, int]]  # block-relative name -> (in, out)
    module_names: list[str]


def read_shape(base: Path) -> Shape:
    """Layer count, sizes and module names of a base model, without loading its weights.

    Raises:
        BackendUnavailable: The architecture has no list of transformer blocks.
    """
    import transformers

    tf: Any = transformers
    config = tf.AutoConfig.from_pretrained(str(base))
    with torch.device("meta"):
        model = tf.AutoModelForCausalLM.from_config(config)
    stacks = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList)]
    if not stacks:
        raise BackendUnavailable(f"{base}: no transformer block list found")
    stack_name, blocks = max(stacks, key=lambda nm: len(nm[1]))
    linears = {
        n: (m.in_features, m.out_features)
        for n, m in blocks[0].named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    return Shape(
        layers=len(blocks),
        hidden=int(config.hidden_size),
        vocab=int(config.vocab_size),
        params=sum(p.numel() for p in model.parameters()),
        layers_pattern=stack_name.rsplit(".", 1)[-1],
        block_linears=linears,
        module_names=[n for n, _ in model.named_modules()],
    )


def check_options(
    profile: dict[str, Any], shape: Shape, patience: int
) -> tuple[Options, list[str]]:
    """Options from a profile dict (defaults from `Profile`) and every reason one can't be honoured."""
    known = {f.name for f in fields(Profile)} | {"patience"}
    merged = {**asdict(Profile()), "patience": patience, **profile}
    bad = [f"{k}: not an option this backend knows" for k in sorted(set(profile) - known)]
    opts = Options(**{k: v for k, v in merged.items() if k in known})
    for key in opts.lora_keys:
        if key not in shape.block_linears:
            choices = ", ".join(sorted(shape.block_linears))
            bad.append(
                f"lora_keys: {key!r} is not a linear layer of a block (choose from {choices})"
            )
    if not (opts.num_layers == -1 or 1 <= opts.num_layers <= shape.layers):
        bad.append(f"num_layers: {opts.num_layers} (the model has {shape.layers} layers; -1 = all)")
    if not 0.0 <= opts.lora_dropout < 1.0:
        bad.append(f"lora_dropout: {opts.lora_dropout} is outside [0, 1)")
    for name in ("lora_rank", "batch_size", "grad_accum", "max_seq_length", "eval_every"):
        if int(getattr(opts, name)) < 1:
            bad.append(f"{name}: must be at least 1")
    if opts.save_every < 1 or opts.patience < 1:
        bad.append("save_every and patience must be at least 1")
    if opts.lora_alpha <= 0 or opts.learning_rate <= 0:
        bad.append("lora_alpha and learning_rate must be positive")
    if opts.max_steps <= 0 and opts.epochs <= 0:
        bad.append("epochs or max_steps must be positive")
    return opts, bad


def lora_config(opts: Options, shape: Shape) -> Any:
    """The PEFT `LoraConfig`: block keys become `target_modules`, `num_layers` the last N layers."""
    import peft

    last = None
    if opts.num_layers > 0:
        last = list(range(shape.layers - opts.num_layers, shape.layers))
    return cast(Any, peft).LoraConfig(
        r=opts.lora_rank,
        lora_alpha=opts.lora_alpha,
        lora_dropout=opts.lora_dropout,
        target_modules=peft_target_modules(list(opts.lora_keys), shape.module_names),
        layers_to_transform=last,
        layers_pattern=shape.layers_pattern if last else None,
        bias="none",
        task_type="CAUSAL_LM",
    )


def estimate_memory_mb(
    shape: Shape, opts: Options, seq: int, *, gpu: bool, quantize: bool
) -> float:
    """Weights + LoRA training state + activations + logits, roughly, in MB."""
    act_bytes = 2 if gpu else 4  # bf16 on a GPU, float32 on the CPU
    embed = shape.vocab * shape.hidden
    weights = (shape.params - embed) * (0.55 if quantize else act_bytes) + embed * act_bytes
    layers = shape.layers if opts.num_layers < 0 else opts.num_layers
    dims = [shape.block_linears[k] for k in opts.lora_keys if k in shape.block_linears]
    lora = sum(opts.lora_rank * (i + o) for i, o in dims) * layers
    lora_bytes = lora * (4 + 4 + (2 if gpu else 8))  # weight, grad, Adam moments (8-bit on GPU)
    tokens = opts.batch_size * max(seq, 1)
    per_layer = tokens * shape.hidden * act_bytes * (2 if opts.grad_checkpoint else 16)
    logits = tokens * shape.vocab * 4 * 3  # float32 logits, their softmax and gradient
    return (weights + lora_bytes + per_layer * shape.layers + logits) / 1e6


def total_steps(opts: Options, rows: int) -> int:
    """Optimizer steps of the run: `max_steps`, or the epochs in accumulated micro-batches."""
    if opts.max_steps > 0:
        return opts.max_steps
    micro_per_epoch = math.ceil(rows / opts.batch_size)
    return max(1, math.ceil(opts.epochs * micro_per_epoch / opts.grad_accum))


def lr_schedule(total: int) -> Callable[[int], float]:
    """LR factor per step, as the MLX backend's: warm-up from 10% over 10% of the steps (at most
    100), then cosine decay to 10% of the peak."""
    warmup = max(1, min(100, total // 10))
    decay = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))

    return factor
