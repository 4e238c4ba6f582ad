"""The optional DPO stage of the CUDA backend, run with trl's `DPOTrainer` after SFT.

When the dataset has `preference.jsonl` (`{"prompt": [messages], "chosen": str, "rejected": str}`
per line), the best SFT adapter is trained further on the pairs. trl copies the starting adapter
into a frozen "ref" adapter, so the reference policy is the SFT model, not the bare base. The
effect is measured the same way before and after: the mean, over pairs, of the chosen answer's
summed log-probability minus the rejected one's, on exactly the tokens `sam_brain.masking`
supervises in SFT. Progress and cancellation reach the trainer through a `TrainerCallback`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from backends.adapter_format import save_adapter
from backends.dpo_options import SFT_BEST, DpoOptions, DpoOutcome
from backends.run_options import base_dir
from sam_brain.config import Profile
from sam_brain.masking import encode_chat
from sam_brain.protocols import Message, Progress, TrainSpec

Pair = dict[str, Any]


@torch.no_grad()
def preference_margin(model: Any, tokenizer: Any, pairs: list[Pair], max_length: int) -> float:
    """Mean over pairs of log p(chosen) - log p(rejected), summed over supervised tokens."""
    model.eval()
    device = next(p.device for p in model.parameters())
    margins = []
    for pair in pairs:
        logps = []
        for answer in (pair["chosen"], pair["rejected"]):
            messages: list[Message] = [*pair["prompt"], {"role": "assistant", "content": answer}]
            ids, mask = encode_chat(tokenizer, messages, max_length)
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x).logits[0, :-1].float()
            token_logps = F.log_softmax(logits, -1).gather(1, x[0, 1:, None])[:, 0]
            weights = torch.tensor(mask[1:], device=device, dtype=token_logps.dtype)
            logps.append(float((token_logps * weights).sum()))
        margins.append(logps[0] - logps[1])
    model.train()
    return sum(margins) / max(len(margins), 1)


def run_dpo(
    model: Any,
    tokenizer: Any,
    pairs: list[Pair],
    opts: DpoOptions,
    *,
    max_length: int,
    work_dir: Path,
    seed: int,
    grad_checkpoint: bool,
    progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> DpoOutcome:
    """Train the PEFT model's "default" adapter on the pairs in place.

    Args:
        model: A `PeftModel` whose "default" adapter (the SFT result) is trainable.
        tokenizer: The base model's tokenizer (it holds the chat template).
        pairs: Rows from `load_pairs`.
        opts: beta, learning rate and length of the stage.
        max_length: Longest prompt+answer in tokens.
        work_dir: Scratch directory for the trainer (nothing is checkpointed there).
        seed: Seed for the trainer's data order.
        grad_checkpoint: Recompute activations in the backward pass.
        progress: Receives one report per logged step (`message` starts with "dpo").
        cancelled: Polled after every step; the stage stops early when it turns true.
    """
    from datasets import Dataset  # type: ignore[import-untyped]
    from transformers import PrinterCallback
    from trl.trainer.dpo_config import DPOConfig
    from trl.trainer.dpo_trainer import DPOTrainer

    before = preference_margin(model, tokenizer, pairs, max_length)
    rows = [
        {
            "prompt": p["prompt"],
            "chosen": [{"role": "assistant", "content": p["chosen"]}],
            "rejected": [{"role": "assistant", "content": p["rejected"]}],
        }
        for p in pairs
    ]
    on_gpu = next(model.parameters()).device.type == "cuda"
    # Passed only when on: transformers 5 warns that the name is deprecated.
    extra: dict[str, Any] = {"gradient_checkpointing": True} if grad_checkpoint else {}
    config = DPOConfig(
        output_dir=str(work_dir),
        beta=opts.beta,
        learning_rate=opts.learning_rate,
        num_train_epochs=opts.epochs,
        max_steps=opts.max_steps if opts.max_steps > 0 else -1,
        per_device_train_batch_size=opts.batch_size,
        lr_scheduler_type="cosine",
        max_length=max_length,
        **extra,
        optim="paged_adamw_8bit" if on_gpu else "adamw_torch",
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        use_cpu=not on_gpu,
        seed=seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    bridge = _bridge(progress, cancelled)
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[bridge],
    )
    trainer.remove_callback(PrinterCallback)  # stdout is the worker's protocol channel
    trainer.train()
    # trl adds a frozen "ref" copy of the adapter; only "default" is the result.
    if "ref" in model.peft_config:
        model.delete_adapter("ref")
    model.set_adapter("default")
    for param in model.parameters():
        if param.requires_grad:  # trl keeps QLoRA adapters in bf16; store float32 as SFT does
            param.data = param.data.float()
    after = preference_margin(model, tokenizer, pairs, max_length)
    finite = math.isfinite(after) and all(math.isfinite(x) for x in bridge.losses)
    return DpoOutcome(before, after, int(trainer.state.global_step), bridge.stopped, finite)


def _bridge(progress: Callable[[Progress], None], cancelled: Callable[[], bool]) -> Any:
    """A `TrainerCallback` forwarding logs as `Progress` and turning `cancelled()` into a stop.

    Built on first use: importing transformers' trainer machinery takes seconds.
    """
    from transformers import TrainerCallback

    class Bridge(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.stopped = False
            self.losses: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if cancelled():
                self.stopped = True
                control.should_training_stop = True

        def on_log(
            self,
            args: Any,
            state: Any,
            control: Any,
            logs: dict[str, Any] | None = None,
            **kwargs: Any,
        ) -> None:
            if not logs or "loss" not in logs:
                return
            self.losses.append(float(logs["loss"]))
            margin = logs.get("rewards/margins")
            message = f"dpo: reward margin {margin:.4f}" if margin is not None else "dpo"
            progress(
                Progress(
                    step=int(state.global_step),
                    total_steps=int(state.max_steps),
                    train_loss=float(logs["loss"]),
                    message=message,
                )
            )

    return Bridge()


def dpo_stage(
    model: Any, tokenizer: Any, pairs: list[dict[str, Any]], spec: TrainSpec,
    opts: Profile, metrics: dict[str, float], notes: list[str],
    progress: Callable[[Progress], None], cancelled: Callable[[], bool],
) -> None:  # fmt: skip
    """DPO on the best SFT adapter; its adapter replaces the SFT one only if it stayed finite."""
    from peft import set_peft_model_state_dict

    out = Path(spec.out_dir)
    set_peft_model_state_dict(model, load_file(str(out / "checkpoint" / SFT_BEST)))
    with tempfile.TemporaryDirectory(dir=out) as work:
        dpo = run_dpo(
            model, tokenizer, pairs, DpoOptions.from_profile(opts),
            max_length=opts.max_seq_length, work_dir=Path(work), seed=spec.seed,
            grad_checkpoint=opts.grad_checkpoint, progress=progress, cancelled=cancelled,
        )  # fmt: skip
    metrics["dpo_margin_before"] = dpo.margin_before
    metrics["dpo_margin_after"] = dpo.margin_after
    metrics["dpo_steps"] = float(dpo.steps)
    if dpo.finite and not dpo.cancelled:
        save_adapter(model, out, base_dir(spec.base_model))
        notes.append(f"dpo: {len(pairs)} pairs, {dpo.steps} steps, beta {opts.dpo_beta}")
    else:
        notes.append("dpo: cancelled or diverged; the SFT adapter is kept")
