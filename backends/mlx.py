"""The MLX LoRA backend: mlx-lm's model loading and LoRA layers, with SAM Brain's own loop.

`MLXBackend.train` loads the base with `mlx_lm.load`, wraps the profile's modules with
`linear_to_lora_layers` (scale = lora_alpha / lora_rank), encodes the data with
`sam_brain.masking` (every assistant turn supervised) and runs `backends.mlx_loop.run_steps`:
length-bucketed batches, token-weighted gradient accumulation, optional gradient checkpointing,
validation with early stopping, and a resumable checkpoint (adapter + optimizer state + step +
data position) written atomically every `save_every` steps. After an out-of-memory error the
micro-batch (or else the sequence length) is halved and the run retried once
(`backends.run_state.retry_after_oom`, shared with the CUDA backend, as are the option checks in
`backends.run_options`). The best adapter by validation loss
(then DPO'd on `preference.jsonl`, if any, by `backends.mlx_dpo`) is kept in
`out_dir/adapters.safetensors` with an mlx-lm `adapter_config.json`, so
`mlx_lm.load(base, adapter_path=out_dir)` and `mlx_lm server --adapter-path` use it directly.
Profile options this backend cannot honour are refused, never ignored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from backends.checkpoint import load_checkpoint, save_checkpoint
from backends.dpo_options import SFT_BEST, DpoOptions
from backends.mlx_dpo import dpo_stage
from backends.mlx_loop import (
    Buckets,
    ModelShape,
    enable_grad_checkpoint,
    estimate_memory_mb,
    govern_memory,
    read_model_shape,
    run_steps,
)
from backends.mlx_loss import evaluate
from backends.run_options import (
    base_dir,
    checked_profile,
    data_notes,
    effective_profile,
    encode_splits,
    fingerprint,
    total_steps,
    warmup_steps,
    write_manifest,
)
from backends.run_state import Hooks, LoopConfig, Row, RunState, finished_reason, retry_after_oom
from sam_brain.config import Profile
from sam_brain.errors import TrainingFailed
from sam_brain.fsutil import atomic_file, write_text_atomic
from sam_brain.masking import MaskStats
from sam_brain.protocols import (
    Message,
    Preflight,
    Progress,
    TrainingBackend,
    TrainResult,
    TrainSpec,
)

ADAPTER_FILE = "adapters.safetensors"


class MLXBackend:
    """LoRA training and generation on MLX (Apple Silicon, or the CPU on Linux).

    Every training setting, early-stopping `patience` and the DPO stage's `dpo_*` included,
    comes from the spec's profile.
    """

    name = "mlx"

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any, Any] | None = None  # (key, model, tokenizer) for generate

    def preflight(self, spec: TrainSpec) -> Preflight:
        """Count samples and tokens and estimate peak memory, without loading weights.

        Raises:
            BackendUnavailable: The profile asks for something this backend cannot honour.
            ModelUnavailable: `spec.base_model` is not a local model directory.
        """
        base = base_dir(spec.base_model)
        shape = read_model_shape(base)
        opts = _checked(spec.profile, shape)
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        data = Path(spec.data_dir)
        train_rows, _, train_stats, val_stats = encode_splits(
            load_tokenizer(base), data, opts.max_seq_length
        )
        longest = max((len(ids) for ids, _ in train_rows), default=0)
        return Preflight(
            train_samples=train_stats.kept,
            val_samples=val_stats.kept,
            train_tokens=train_stats.tokens,
            estimated_memory_mb=estimate_memory_mb(shape, opts, min(longest, opts.max_seq_length)),
            notes=data_notes(train_stats, val_stats),
        )

    def train(
        self,
        spec: TrainSpec,
        progress: Callable[[Progress], None],
        cancelled: Callable[[], bool],
    ) -> TrainResult:
        """Train a LoRA adapter into `spec.out_dir`, resuming from its checkpoint when allowed.

        Raises:
            BackendUnavailable: The profile asks for something this backend cannot honour.
            TrainingFailed: No trainable rows, NaN/inf loss, or out of memory after a retry.
        """
        wall = time.perf_counter()
        run = _setup(spec)
        reason = _fit(run, spec, progress, cancelled)
        run.save_ckpt()
        if not run.val_rows or not (run.out / ADAPTER_FILE).exists():
            run.save_best()
        run.notes.append(f"stopped: {reason} at step {run.state.step}/{run.steps}")
        metrics = run.state.metrics(time.perf_counter() - wall)
        if reason != "cancelled":  # DPO on the best SFT adapter when preference.jsonl has rows
            dpo = DpoOptions.from_profile(run.opts)
            dpo_stage(
                run.model,
                run.tokenizer,
                spec,
                run.opts,
                dpo,
                metrics,
                run.notes,
                progress,
                cancelled,
            )
        body = {
            "effective_profile": effective_profile(run.opts, run.state.effective()),
            "stop_reason": reason,
            "data": {"train": asdict(run.train_stats), "valid": asdict(run.val_stats)},
            "metrics": metrics,
            "notes": run.notes,
        }
        write_manifest(run.out, "mlx", spec, run.base, body, ["mlx", "mlx-lm"])
        return TrainResult(
            adapter_dir=str(run.out), steps=run.state.step, metrics=metrics, notes=run.notes
        )

    def generate(
        self,
        base_model: str,
        adapter_dir: str | None,
        messages: list[Message],
        max_tokens: int = 64,
    ) -> str:
        """Greedy completion of `messages` (chat template applied), with the adapter if given."""
        from mlx_lm import generate, load

        base = str(base_dir(base_model))
        # Reuse the last model loaded, unless the adapter file was rewritten since.
        weights = Path(adapter_dir) / ADAPTER_FILE if adapter_dir else None
        key = (base, adapter_dir, weights.stat().st_mtime_ns if weights else None)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = (key, *load(base, adapter_path=adapter_dir)[:2])
        _, model, tokenizer = self._loaded
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True)  # type: ignore[no-untyped-call]
        return str(generate(model, tokenizer, prompt, max_tokens=max_tokens))


@dataclass
class _Run:
    """One SFT run's parts: the model with its LoRA layers, the data, optimizer and state."""

    base: Path
    shape: ModelShape
    opts: Profile
    out: Path
    model: Any
    tokenizer: Any
    train_rows: list[Row]
    val_rows: list[Row]
    train_stats: MaskStats
    val_stats: MaskStats
    notes: list[str]
    steps: int
    optimizer: Any
    state: RunState

    def save_best(self) -> None:
        _save_adapter(self.model, self.out / ADAPTER_FILE)
        _save_adapter(self.model, self.out / "checkpoint" / SFT_BEST)

    def save_ckpt(self) -> None:
        def write(d: Path) -> None:
            mx.save_safetensors(str(d / ADAPTER_FILE), _adapter_weights(self.model))
            mx.save_safetensors(str(d / "optimizer.safetensors"), _opt_weights(self.optimizer))

        save_checkpoint(self.out / "checkpoint", self.state.step, asdict(self.state), write)


def _setup(spec: TrainSpec) -> _Run:
    """Load the base, encode the data, add LoRA layers, and resume from a matching checkpoint."""
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    base = base_dir(spec.base_model)
    shape = read_model_shape(base)
    opts = _checked(spec.profile, shape)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load(str(base))[:2]
    data = Path(spec.data_dir)
    train_rows, val_rows, train_stats, val_stats = encode_splits(
        tokenizer, data, opts.max_seq_length
    )
    notes = data_notes(train_stats, val_stats)
    if not train_rows:
        raise TrainingFailed(f"no trainable rows in {data / 'train.jsonl'}")
    mx.random.seed(spec.seed)  # LoRA A matrices are drawn from this
    model.freeze()
    lora = _lora_parameters(opts)
    linear_to_lora_layers(model, opts.num_layers, lora)
    _write_adapter_config(out, base, opts, lora)
    steps = total_steps(opts, len(train_rows))
    optimizer = optim.Adam(learning_rate=_schedule(opts.learning_rate, steps))
    state = RunState(opts.batch_size, opts.grad_accum, opts.max_seq_length)
    state.fingerprint = fingerprint(base, spec.profile, spec.seed, data)
    found = load_checkpoint(out / "checkpoint") if spec.resume else None
    if found is not None and found[1].get("fingerprint") == state.fingerprint:
        state = _restore(found[0], found[1], model, optimizer)
        notes.append(f"resumed from step {state.step}")
    elif found is not None:
        notes.append("checkpoint ignored: it belongs to different data, base or profile")
    if state.step == 0 and spec.init_adapter:
        notes.append(_init_from(model, Path(spec.init_adapter)))
    if not val_rows:
        notes.append("no validation rows: the final adapter is kept, no early stopping")
    return _Run(
        *(base, shape, opts, out, model, tokenizer, train_rows, val_rows, train_stats, val_stats),
        *(notes, steps, optimizer, state),
    )


def _fit(
    run: _Run,
    spec: TrainSpec,
    progress: Callable[[Progress], None],
    cancelled: Callable[[], bool],
) -> str:
    """The SFT loop under the memory guard, retried once after an out-of-memory error."""
    opts, state = run.opts, run.state
    cfg = LoopConfig(run.steps, opts.eval_every, opts.save_every, opts.patience, spec.seed)
    hooks = Hooks(progress, cancelled, on_best=run.save_best, on_save=run.save_ckpt)

    def attempt(rows: list[Row]) -> str:
        train = Buckets(rows, state.batch_size, spec.seed)
        valid = Buckets(run.val_rows, state.batch_size, spec.seed) if run.val_rows else None
        if valid is not None and state.initial_val_loss is None:
            state.initial_val_loss = state.best_val_loss = evaluate(run.model, valid)
            run.save_best()  # the untrained adapter is the best until one beats it
        return finished_reason(state, cfg) or run_steps(
            run.model, run.optimizer, train, valid, state, cfg, hooks
        )

    def announce(note: str) -> None:
        progress(Progress(step=state.step, total_steps=run.steps, message=note))

    restore_memory = govern_memory(estimate_memory_mb(run.shape, opts, opts.max_seq_length))
    undo_ckpt = enable_grad_checkpoint(run.model) if opts.grad_checkpoint else None
    mx.reset_peak_memory()
    try:
        return retry_after_oom(
            attempt, run.train_rows, state, run.notes, announce=announce, release=mx.clear_cache
        )
    finally:
        if undo_ckpt is not None:
            undo_ckpt()
        restore_memory()


def _checked(profile: dict[str, Any], shape: ModelShape) -> Profile:
    """The checked profile with `num_layers` -1 resolved to every block (mlx-lm's config)."""
    opts = checked_profile(
        profile,
        backend="mlx",
        num_blocks=shape.num_layers,
        block_linears=shape.linears,
    )
    layers = shape.num_layers if opts.num_layers == -1 else opts.num_layers
    return replace(opts, num_layers=layers)


def _lora_parameters(opts: Profile) -> dict[str, Any]:
    return {
        "rank": opts.lora_rank,
        "scale": opts.lora_alpha / opts.lora_rank,
        "dropout": opts.lora_dropout,
        "keys": list(opts.lora_keys),
    }


def _write_adapter_config(out: Path, base: Path, opts: Profile, lora: dict[str, Any]) -> None:
    # mlx-lm's own format, read by mlx_lm.load(adapter_path=...) and the server.
    config = {
        "fine_tune_type": "lora",
        "model": str(base),
        "num_layers": opts.num_layers,
        "lora_parameters": lora,
    }
    write_text_atomic(out / "adapter_config.json", json.dumps(config, indent=2, sort_keys=True))


def _schedule(peak: float, total: int) -> Callable[[mx.array], mx.array]:
    """Linear warm-up over 10% of the steps (at most 100), then cosine decay to 10% of peak."""
    warmup = warmup_steps(total)
    return optim.join_schedules(  # type: ignore[no-any-return]
        [
            optim.linear_schedule(peak * 0.1, peak, warmup),
            optim.cosine_decay(peak, max(1, total - warmup), peak * 0.1),
        ],
        [warmup],
    )


def _restore(directory: Path, saved: dict[str, Any], model: Any, optimizer: Any) -> RunState:
    model.load_weights(list(_load_tensors(directory / ADAPTER_FILE).items()), strict=False)
    opt_state = _load_tensors(directory / "optimizer.safetensors")
    optimizer.state = tree_unflatten(list(opt_state.items()))
    return RunState.from_saved(saved)


def _init_from(model: Any, adapter_dir: Path) -> str:
    """Start from an earlier adapter's LoRA weights when their names and shapes match."""
    path = adapter_dir / ADAPTER_FILE
    if not path.is_file():
        return f"init adapter {adapter_dir} has no {ADAPTER_FILE}; started from zero"
    weights = _load_tensors(path)
    current = _adapter_weights(model)
    if set(weights) != set(current) or any(weights[k].shape != current[k].shape for k in weights):
        return f"init adapter {adapter_dir} has another LoRA layout; started from zero"
    model.load_weights(list(weights.items()), strict=False)
    return f"started from the weights of {adapter_dir}"


def _load_tensors(path: Path) -> dict[str, mx.array]:
    loaded = mx.load(str(path))
    if not isinstance(loaded, dict):
        raise TrainingFailed(f"{path} is not a safetensors file of named tensors")
    return loaded


def _adapter_weights(model: Any) -> dict[str, mx.array]:
    return dict(tree_flatten(model.trainable_parameters()))


def _opt_weights(optimizer: Any) -> dict[str, mx.array]:
    return dict(tree_flatten(optimizer.state))


def _save_adapter(model: Any, path: Path) -> None:
    with atomic_file(path) as tmp:
        mx.save_safetensors(str(tmp), _adapter_weights(model))


if TYPE_CHECKING:  # mypy --strict holds the backend to the plug-in contract
    _contract: TrainingBackend = MLXBackend()
