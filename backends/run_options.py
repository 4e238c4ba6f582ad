"""What both backends do before and after training: check the profile, size the run, write it up.

`checked_profile` turns a spec's profile dict into a `Profile` and refuses, in one
`BackendUnavailable` naming every problem, any option that is unknown, out of range, or names a
module or layer count the model does not have; nothing is ignored. The rest is the run's
arithmetic (`total_steps`, the learning-rate factor), the data (`encode_splits` through
`sam_brain.masking`), the resume `fingerprint` (its hash input is fixed: changing it orphans
every saved checkpoint) and `manifest.json`. Imports neither mlx nor torch.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

from backends.run_state import Row
from sam_brain.config import Profile
from sam_brain.errors import BackendUnavailable, ModelUnavailable
from sam_brain.fsutil import write_text_atomic
from sam_brain.masking import MaskStats, encode_rows, load_rows
from sam_brain.protocols import TrainSpec

# Profile fields both backends implement; any other option is refused, not ignored.
HONOURED = frozenset(
    {
        *("lora_rank", "lora_alpha", "lora_dropout", "lora_keys", "num_layers"),
        *("batch_size", "grad_accum", "max_seq_length", "grad_checkpoint", "learning_rate"),
        *("epochs", "max_steps", "eval_every", "save_every", "patience"),
        *("dpo_beta", "dpo_learning_rate", "dpo_epochs", "dpo_max_steps"),
    }
)
_RANGES: dict[str, Callable[[Profile], bool]] = {
    "lora_rank": lambda o: o.lora_rank >= 1,
    "lora_alpha": lambda o: o.lora_alpha > 0,
    "lora_dropout": lambda o: 0 <= o.lora_dropout < 1,
    "batch_size": lambda o: o.batch_size >= 1,
    "grad_accum": lambda o: o.grad_accum >= 1,
    "max_seq_length": lambda o: o.max_seq_length >= 2,
    "learning_rate": lambda o: o.learning_rate > 0,
    "eval_every": lambda o: o.eval_every >= 1,
    "save_every": lambda o: o.save_every >= 1,
    "patience": lambda o: o.patience >= 1,
    "epochs": lambda o: o.epochs > 0 or o.max_steps > 0,
    "max_steps": lambda o: o.max_steps >= 0,
    "dpo_beta": lambda o: o.dpo_beta > 0,
    "dpo_epochs": lambda o: o.dpo_epochs > 0 or o.dpo_max_steps > 0,
    "dpo_max_steps": lambda o: o.dpo_max_steps >= 0,
}


def checked_profile(
    profile: dict[str, Any],
    *,
    backend: str,
    num_blocks: int,
    block_linears: Collection[str],
) -> Profile:
    """The profile as a `Profile`, defaults filled in (`num_layers` -1 stays -1).

    Args:
        profile: The spec's profile dict; a key set to a false value (None, False, 0, "")
            asks for nothing and is accepted even when unknown.
        backend: Named in the refusal.
        num_blocks: Transformer blocks of the base model.
        block_linears: Block-relative names of its linear modules (what `lora_keys` may name).

    Raises:
        BackendUnavailable: Listing every option that is unknown or cannot be applied.
    """
    problems = [
        f"{key}={value!r}: not an option this backend knows"
        for key, value in sorted(profile.items())
        if key not in HONOURED and value not in (None, False, 0, "", [], {})
    ]
    given = {k: v for k, v in profile.items() if k in HONOURED}
    given = {k: v for k, v in given.items() if v is not None}  # None: the Profile default
    opts = replace(Profile(), **given)
    for name, ok in _RANGES.items():
        if not ok(opts):
            problems.append(f"{name}={getattr(opts, name)!r} is out of range")
    if opts.num_layers > num_blocks or opts.num_layers == 0 or opts.num_layers < -1:
        problems.append(f"num_layers={opts.num_layers} but the model has {num_blocks} blocks")
    missing = [k for k in opts.lora_keys if k not in block_linears]
    if missing or not opts.lora_keys:
        problems.append(
            f"lora_keys {missing or '[]'} are not linear modules of a block "
            f"(choose from: {', '.join(sorted(block_linears))})"
        )
    if problems:
        raise BackendUnavailable(f"{backend} backend cannot honour: " + "; ".join(problems))
    return opts


def base_dir(base_model: str) -> Path:
    """The base model's local directory.

    Raises:
        ModelUnavailable: It is not a directory holding a `config.json`.
    """
    path = Path(base_model).expanduser()
    if not (path / "config.json").exists():
        raise ModelUnavailable(f"base model {base_model!r} is not a local model directory")
    return path


def total_steps(opts: Profile, rows: int) -> int:
    """Optimizer steps of the run: `max_steps`, or the epochs in accumulated micro-batches."""
    if opts.max_steps > 0:
        return opts.max_steps
    micro_per_epoch = math.ceil(rows / opts.batch_size)
    return max(1, math.ceil(opts.epochs * micro_per_epoch / opts.grad_accum))


def warmup_steps(total: int) -> int:
    """Linear warm-up over 10% of the steps, at most 100."""
    return max(1, min(100, total // 10))


def lr_factor(total: int) -> Callable[[int], float]:
    """The learning rate per step as a fraction of the peak: warm-up from 10%, then cosine
    decay to 10%."""
    warmup = warmup_steps(total)
    decay = max(1, total - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(step - warmup, decay) / decay))

    return factor


def encode_splits(
    tokenizer: Any, data: Path, max_length: int
) -> tuple[list[Row], list[Row], MaskStats, MaskStats]:
    """Train and validation rows of `data/{train,valid}.jsonl` through `sam_brain.masking`."""
    train, train_stats = encode_rows(tokenizer, load_rows(data / "train.jsonl"), max_length)
    val, val_stats = encode_rows(tokenizer, load_rows(data / "valid.jsonl"), max_length)
    return train, val, train_stats, val_stats


def data_notes(train: MaskStats, val: MaskStats) -> list[str]:
    """A note per kind of row that was cut or dropped."""
    notes = []
    for split, st in (("train", train), ("valid", val)):
        if st.truncated:
            notes.append(f"{split}: {st.truncated} of {st.rows} rows truncated to max_seq_length")
        if st.fully_masked:
            notes.append(f"{split}: {st.fully_masked} rows dropped with no assistant tokens")
    return notes


def fingerprint(base: Path, profile: dict[str, Any], seed: int, data: Path, *extra: Any) -> str:
    """What a checkpoint must match to be resumed: base, profile, seed, `extra` and the data."""
    h = hashlib.sha256()
    h.update(json.dumps([str(base), profile, seed, *extra], sort_keys=True).encode())
    train = data / "train.jsonl"
    h.update(train.read_bytes() if train.exists() else b"")
    return h.hexdigest()[:32]


def write_manifest(
    out: Path, backend: str, spec: TrainSpec, base: Path, body: dict[str, Any], dists: list[str]
) -> None:
    """`manifest.json`: what was trained from what, how (`body`, whose `metrics` hold
    `wall_seconds`), what it measured, and the versions of the distributions `dists`."""
    now = time.time()
    manifest = {
        "backend": backend,
        "run_id": spec.run_id,
        "base_model": str(base),
        "seed": spec.seed,
        "profile": spec.profile,
        **body,
        "started_at": now - float(body["metrics"]["wall_seconds"]),
        "finished_at": now,
        "versions": {dist: version(dist) for dist in dists},
    }
    write_text_atomic(out / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


def effective_profile(opts: Profile, shrunk: dict[str, int]) -> dict[str, Any]:
    """The profile a run actually trained with: `opts` with the batch shape it ended with."""
    return {**asdict(opts), **shrunk}
