"""The CUDA LoRA backend: transformers + peft + bitsandbytes (QLoRA), with SAM Brain's own loop.

`CudaBackend.train` loads the base in 4-bit NF4 (double quantization; compute dtype bf16 on CUDA,
float32 on CPU, where bitsandbytes 0.50 runs NF4 too) unless the constructor or the environment
says `quantize=False` (`SAM_BRAIN_CUDA_QUANTIZE=0`), adds LoRA from the profile (`lora_keys` such
as `self_attn.q_proj` become PEFT `target_modules`, `num_layers` the last N `layers_to_transform`)
and runs `backends.cuda_loop.run_steps`: paged 8-bit AdamW on CUDA (torch AdamW elsewhere, said in
the notes), warm-up then cosine decay, gradient accumulation, optional gradient checkpointing,
validation with early stopping, and a resumable checkpoint (adapter, optimizer, scheduler, RNG,
step, data position) written atomically every `save_every` steps. Out of memory in a step halves
the micro-batch (or else the sequence length) and retries once, as the MLX backend does
(`backends.run_state.retry_after_oom`). Loss masks come from `sam_brain.masking`, so the
supervised tokens are the MLX backend's. The best adapter is kept in mlx-lm format at the top of
`out_dir` (what the version registry and `mlx_lm.load` read) and in PEFT format in
`out_dir/peft/`. With `preference.jsonl`, a DPO stage follows (`backends.cuda_dpo`).

Multi-GPU: launched as `torchrun --nproc_per_node N -m sam_brain.train.worker cuda spec.json` (or
`accelerate launch --multi_gpu`), `train` joins the process group, trains a
`DistributedDataParallel` model with each process taking its share of every step's micro-batches,
and lets rank 0 alone write and report (`backends/cuda_dist.py`). The DPO stage runs only in a
single process.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from backends.adapter_format import MLX_WEIGHTS, PEFT_DIR, PEFT_WEIGHTS, peft_files, save_adapter
from backends.checkpoint import load_checkpoint, save_checkpoint
from backends.cuda_dist import Ranks, any_rank, from_main, join_group, leave_group, on_main, wrap
from backends.cuda_dpo import dpo_stage
from backends.cuda_loop import Buckets, evaluate, restore_state, run_steps, save_state
from backends.cuda_options import (
    check_options,
    estimate_memory_mb,
    init_from_adapter,
    lora_config,
    read_shape,
)
from backends.dpo_options import SFT_BEST
from backends.run_options import (
    base_dir,
    data_notes,
    effective_profile,
    encode_splits,
    fingerprint,
    lr_factor,
    total_steps,
    write_manifest,
)
from backends.run_state import Hooks, LoopConfig, Row, RunState, finished_reason, retry_after_oom
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable, ModelUnavailable, TrainingFailed
from sam_brain.fsutil import atomic_file
from sam_brain.masking import MaskStats, load_pairs
from sam_brain.protocols import (
    Message,
    Preflight,
    Progress,
    TrainingBackend,
    TrainResult,
    TrainSpec,
)


class CudaBackend:
    """QLoRA training and generation with transformers + peft (CUDA, or the CPU)."""

    name = "cuda"

    def __init__(
        self,
        quantize: bool | None = None,
    ) -> None:
        """Args:
        quantize: Load the base in 4-bit NF4. None reads `SAM_BRAIN_CUDA_QUANTIZE` ("0", "false"
            or "no" turn it off, "1" on); default on with CUDA, off on the CPU.

        Every training setting, early-stopping `patience` and the DPO stage's `dpo_*` included,
        comes from the spec's profile.
        """
        # 4-bit exists to fit a GPU's memory; on a CPU it only costs speed (measured 1.7x
        # slower here), so without CUDA it is opt-in.
        default = "1" if torch.cuda.is_available() else "0"
        env = os.environ.get("SAM_BRAIN_CUDA_QUANTIZE", default).strip().lower()
        self.quantize = quantize if quantize is not None else env not in ("0", "false", "no")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def preflight(self, spec: TrainSpec) -> Preflight:
        """Count samples and tokens and estimate peak memory, without loading weights.

        Raises:
            BackendUnavailable: The profile asks for something this backend cannot honour.
            ModelUnavailable: `spec.base_model` is not a local model directory.
        """
        base = base_dir(spec.base_model)
        shape = read_shape(base)
        opts = check_options(spec.profile, shape)
        train, _, tstats, vstats = encode_splits(
            _tokenizer(base), Path(spec.data_dir), opts.max_seq_length
        )
        longest = max((len(ids) for ids, _ in train), default=0)
        gpu = self.device.type == "cuda"
        return Preflight(
            train_samples=tstats.kept,
            val_samples=vstats.kept,
            train_tokens=tstats.tokens,
            estimated_memory_mb=estimate_memory_mb(
                shape, opts, longest, gpu=gpu, quantize=self.quantize
            ),
            notes=self._device_notes() + data_notes(tstats, vstats),
        )

    def train(
        self, spec: TrainSpec, progress: Callable[[Progress], None], cancelled: Callable[[], bool]
    ) -> TrainResult:
        """Train a LoRA adapter into `spec.out_dir`, resuming from its checkpoint when allowed.

        Under `torchrun` (`WORLD_SIZE` > 1) every process calls this; rank 0 writes the files
        and reports progress, and every process returns the same result.

        Raises:
            BackendUnavailable: The profile asks for something this backend cannot honour.
            TrainingFailed: No trainable rows, a NaN/inf loss, or out of memory after a retry.
        """
        ranks = join_group()
        if ranks.distributed and self.device.type == "cuda":
            self.device = torch.device("cuda", ranks.local_rank)
        try:
            return self._train(spec, progress, cancelled, ranks)
        finally:
            leave_group(ranks)

    def _train(
        self, spec: TrainSpec, progress: Callable[[Progress], None], cancelled: Callable[[], bool],
        ranks: Ranks,
    ) -> TrainResult:  # fmt: skip
        wall = time.perf_counter()
        run = self._setup(spec, ranks)
        reason = self._fit(run, spec, ranks, progress, cancelled)
        run.save_ckpt()
        if from_main(ranks, not run.val_rows or not (run.out / MLX_WEIGHTS).exists(), self.device):
            run.save_best()
        run.notes.append(f"stopped: {reason} at step {run.state.step}/{run.steps}")
        metrics = run.state.metrics(time.perf_counter() - wall)
        pairs = load_pairs(Path(spec.data_dir) / "preference.jsonl")
        if pairs and reason != "cancelled" and ranks.distributed:
            run.notes.append("dpo: skipped, it runs in a single process only")
        elif pairs and reason != "cancelled":
            dpo_stage(
                run.model, run.tokenizer, pairs, spec, run.opts, metrics, run.notes, progress,
                cancelled,
            )  # fmt: skip
        if ranks.main:
            body = {
                "effective_profile": effective_profile(run.opts, run.state.effective()),
                "quantize": self.quantize, "processes": ranks.world, "stop_reason": reason,
                "data": {"train": asdict(run.tstats), "valid": asdict(run.vstats)},
                "metrics": metrics, "notes": run.notes,
            }  # fmt: skip
            dists = ["torch", "transformers", "peft", "bitsandbytes"]
            write_manifest(run.out, "cuda", spec, run.base, body, dists)
        return TrainResult(
            adapter_dir=str(run.out), steps=run.state.step, metrics=metrics, notes=run.notes
        )

    def _setup(self, spec: TrainSpec, ranks: Ranks) -> _Run:
        """Encode the data, load the base with LoRA, and resume from a matching checkpoint."""
        from peft import get_peft_model

        base = base_dir(spec.base_model)
        shape = read_shape(base)
        opts = check_options(spec.profile, shape)
        out = Path(spec.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        tokenizer = _tokenizer(base)
        data = Path(spec.data_dir)
        train_rows, val_rows, tstats, vstats = encode_splits(tokenizer, data, opts.max_seq_length)
        notes = self._device_notes() + data_notes(tstats, vstats)
        if not train_rows:
            raise TrainingFailed(f"no trainable rows in {data / 'train.jsonl'}")
        if ranks.distributed:
            notes.append(f"{ranks.world} processes share each step; rank 0 writes the files")
            if opts.grad_accum < ranks.world:  # every process needs a micro-batch per step
                opts = replace(opts, grad_accum=ranks.world)
                notes.append(f"grad_accum raised to {ranks.world}, one micro-batch per process")
        torch.manual_seed(spec.seed)  # LoRA A matrices are drawn from this
        model = self.load_model(base, training=True, grad_checkpoint=opts.grad_checkpoint)
        model = get_peft_model(model, lora_config(opts, shape))
        steps = total_steps(opts, len(train_rows))
        optimizer = self._optimizer(model, opts.learning_rate)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(steps))
        state = RunState(opts.batch_size, opts.grad_accum, opts.max_seq_length)
        state.fingerprint = fingerprint(base, spec.profile, spec.seed, data, self.quantize)
        found = load_checkpoint(out / "checkpoint") if spec.resume else None
        if found is not None and found[1].get("fingerprint") == state.fingerprint:
            restore_state(found[0], model, optimizer, scheduler)
            state = RunState.from_saved(found[1])
            notes.append(f"resumed from step {state.step}")
        elif found is not None:
            notes.append("checkpoint ignored: it belongs to different data, base or profile")
        if state.step == 0 and spec.init_adapter:
            with tempfile.TemporaryDirectory() as scratch:  # an mlx-lm adapter's PEFT copy
                init = init_from_adapter(model, Path(spec.init_adapter), base, Path(scratch))
            notes.append(init)
        if not val_rows:
            notes.append("no validation rows: the final adapter is kept, no early stopping")
        return _Run(
            base, opts, out, model, tokenizer, train_rows, val_rows, tstats, vstats, notes,
            steps, optimizer, scheduler, state, ranks,
        )  # fmt: skip

    def _fit(
        self, run: _Run, spec: TrainSpec, ranks: Ranks, progress: Callable[[Progress], None],
        cancelled: Callable[[], bool],
    ) -> str:  # fmt: skip
        """The SFT loop over every rank, retried once after out-of-memory in one process."""
        state, opts = run.state, run.opts
        trainer = wrap(run.model, ranks, self.device)
        report = progress if ranks.main else _silent
        hooks = Hooks(report, any_rank(ranks, cancelled, self.device), run.save_best, run.save_ckpt)
        pad = run.tokenizer.pad_token_id if run.tokenizer.pad_token_id is not None else 0
        cfg = LoopConfig(run.steps, opts.eval_every, opts.save_every, opts.patience, spec.seed)

        def attempt(rows: list[Row]) -> str:
            train = Buckets(rows, state.batch_size, spec.seed, pad, self.device)
            valid = None
            if run.val_rows:
                valid = Buckets(run.val_rows, state.batch_size, spec.seed, pad, self.device)
            if valid is not None and state.initial_val_loss is None:
                state.initial_val_loss = state.best_val_loss = evaluate(trainer, valid)
                run.save_best()  # the untrained adapter is the best until something beats it
            return finished_reason(state, cfg) or run_steps(
                trainer, run.optimizer, run.scheduler, train, valid, state, cfg, hooks
            )

        def release() -> None:
            run.optimizer.zero_grad(set_to_none=True)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

        return retry_after_oom(
            attempt, run.train_rows, state, run.notes, release=release,
            retry=not ranks.distributed,
            announce=lambda note: report(Progress(state.step, run.steps, message=note)),
        )  # fmt: skip

    def generate(
        self,
        base_model: str,
        adapter_dir: str | None,
        messages: list[Message],
        max_tokens: int = 64,
    ) -> str:
        """Greedy completion of `messages` (chat template applied), with the adapter if given.

        The adapter may be this backend's output, a bare PEFT adapter or an mlx-lm adapter.
        """
        from peft import PeftModel

        base = base_dir(base_model)
        tokenizer = _tokenizer(base)
        model = self.load_model(base, training=False, grad_checkpoint=False)
        if adapter_dir is not None:
            with tempfile.TemporaryDirectory() as tmp:
                peft_dir = peft_files(Path(adapter_dir), base, Path(tmp))
                model = PeftModel.from_pretrained(model, str(peft_dir))
        model.eval()
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tokenizer(text, add_special_tokens=False, return_tensors="pt").to(self.device)
        with torch.no_grad():
            ids = model.generate(
                **enc, max_new_tokens=max_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        return str(tokenizer.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))

    def _device_notes(self) -> list[str]:
        weights = "4-bit NF4" if self.quantize else "unquantized"
        notes = [f"device: {self.device}; base weights: {weights}"]
        if self.device.type != "cuda":
            notes.append("no CUDA: torch AdamW instead of paged 8-bit AdamW (bitsandbytes)")
        return notes

    def load_model(self, base: Path, *, training: bool, grad_checkpoint: bool = False) -> Any:
        """The base model (4-bit NF4 unless `quantize` is off) on this backend's device; for
        training it is prepared for k-bit training or gradient checkpointing as the profile says."""
        import transformers

        tf: Any = transformers  # untyped calls below; the loaded model is used as Any
        gpu = self.device.type == "cuda"
        dtype = torch.bfloat16 if gpu and torch.cuda.is_bf16_supported() else torch.float32
        kwargs: dict[str, Any] = {"dtype": dtype}
        if self.quantize:
            kwargs["quantization_config"] = tf.BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
            kwargs["device_map"] = {"": torch.cuda.current_device() if gpu else "cpu"}
        try:
            model: Any = tf.AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
        except ImportError as err:
            raise BackendUnavailable(f"cuda backend cannot load {base}: {err}") from err
        except (OSError, ValueError) as err:
            raise ModelUnavailable(f"cannot load base model {base}: {err}") from err
        if not self.quantize:
            model.to(self.device)
        if not training:
            return model
        model.config.use_cache = False
        ckpt_kwargs = {"use_reentrant": False}
        if self.quantize:
            import peft

            return cast(Any, peft).prepare_model_for_kbit_training(
                model, grad_checkpoint, gradient_checkpointing_kwargs=ckpt_kwargs
            )
        if grad_checkpoint:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
            model.enable_input_require_grads()
        return model

    def _optimizer(self, model: Any, lr: float) -> Any:
        params = [p for p in model.parameters() if p.requires_grad]
        if self.device.type == "cuda":
            import bitsandbytes

            return cast(Any, bitsandbytes).optim.PagedAdamW8bit(params, lr=lr, weight_decay=0.0)
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)


def _silent(report: Progress) -> None:
    """Progress of a process other than rank 0: rank 0 reports for all."""


@dataclass
class _Run:
    """One SFT run's parts; the file writers run on rank 0 only."""

    base: Path
    opts: Profile
    out: Path
    model: Any
    tokenizer: Any
    train_rows: list[Row]
    val_rows: list[Row]
    tstats: MaskStats
    vstats: MaskStats
    notes: list[str]
    steps: int
    optimizer: Any
    scheduler: Any
    state: RunState
    ranks: Ranks

    def save_best(self) -> None:
        on_main(self.ranks, self._write_best)()

    def save_ckpt(self) -> None:
        on_main(self.ranks, self._write_ckpt)()

    def _write_best(self) -> None:
        save_adapter(self.model, self.out, self.base)
        with atomic_file(self.out / "checkpoint" / SFT_BEST) as tmp:
            tmp.write_bytes((self.out / PEFT_DIR / PEFT_WEIGHTS).read_bytes())

    def _write_ckpt(self) -> None:
        write = partial(
            save_state, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler
        )
        save_checkpoint(self.out / "checkpoint", self.state.step, asdict(self.state), write)


def _tokenizer(base: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(base))


if TYPE_CHECKING:  # mypy --strict holds the backend to the plug-in contract
    _contract: TrainingBackend = CudaBackend()
