"""The CUDA backend's view of a profile: checked options, the model's shape, LoRA config, memory.

`read_shape` instantiates the base model on torch's meta device (no weights, no memory) to learn
its layer count and the linear layers of a block, so `check_options` can refuse a `lora_keys`
entry or `num_layers` the model does not have before anything is loaded, and `estimate_memory_mb`
can size the run. Everything the profile asks for is either honoured or named in the refusal
(the checks themselves are `backends.run_options.checked_profile`, shared with the MLX backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from backends.adapter_format import peft_target_modules
from backends.run_options import checked_profile
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable


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


def check_options(profile: dict[str, Any], shape: Shape) -> Profile:
    """The checked profile (`num_layers` -1 kept: PEFT's "every layer").

    Raises:
        BackendUnavailable: Listing every option this backend cannot honour.
    """
    return checked_profile(
        profile,
        backend="cuda",
        num_blocks=shape.layers,
        block_linears=shape.block_linears,
    )


def lora_config(opts: Profile, shape: Shape) -> Any:
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
    shape: Shape, opts: Profile, seq: int, *, gpu: bool, quantize: bool
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


def init_from_adapter(model: Any, adapter_dir: Path, base: Path, scratch: Path) -> str:
    """Load an earlier adapter's LoRA weights into a fresh PEFT model when the layouts match.

    The adapter may be in PEFT form (its `peft/` folder or itself) or mlx-lm form (converted into
    `scratch`), as versions store both. Returns the note the run reports.
    """
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    from backends.adapter_format import PEFT_WEIGHTS, peft_files
    from sam_brain.errors import NotFound

    try:
        weights = load_file(str(peft_files(adapter_dir, base, scratch) / PEFT_WEIGHTS))
    except (NotFound, OSError, ValueError) as err:
        return f"init adapter {adapter_dir} unreadable ({err}); started from zero"
    current = get_peft_model_state_dict(model)
    if set(weights) != set(current) or any(weights[k].shape != current[k].shape for k in weights):
        return f"init adapter {adapter_dir} has another LoRA layout; started from zero"
    set_peft_model_state_dict(model, weights)
    return f"started from the weights of {adapter_dir}"
