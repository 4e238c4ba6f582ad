"""What both DPO stages share: their settings and what they report.

The MLX stage (`backends/mlx_dpo.py`) and the CUDA stage (`backends/cuda_dpo.py`, on trl) take the
same options from the profile's `dpo_*` keys and report the same outcome, so the
manifest and the tests read one shape. This module imports neither MLX nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from sam_brain.config import Profile

SFT_BEST = "sft_best.safetensors"  # in checkpoint/: where DPO starts, even on a re-run


@dataclass
class DpoOptions:
    """DPO settings (the profile's `dpo_*` keys)."""

    beta: float = 0.1
    learning_rate: float = 5e-6
    epochs: float = 1.0
    max_steps: int = 0  # 0: run the epochs
    batch_size: int = 2

    @classmethod
    def from_profile(cls, opts: Profile) -> DpoOptions:
        return cls(opts.dpo_beta, opts.dpo_learning_rate, opts.dpo_epochs, opts.dpo_max_steps)


@dataclass
class DpoOutcome:
    """What the stage measured; `finite` is false when the loss or the margin diverged."""

    margin_before: float
    margin_after: float
    steps: int
    cancelled: bool
    finite: bool
    pairs: int = 0  # pairs trained on: those with answer tokens within max_length
