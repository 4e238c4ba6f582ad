"""What both DPO stages share: their settings and what they report.

The MLX stage (`backends/mlx_dpo.py`) and the CUDA stage (`backends/cuda_dpo.py`, on trl) take the
same options from the backend's `dpo_*` constructor arguments and report the same outcome, so the
manifest and the tests read one shape. This module imports neither MLX nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass

SFT_BEST = "sft_best.safetensors"  # in checkpoint/: where DPO starts, even on a re-run


@dataclass
class DpoOptions:
    """DPO settings (the backend's constructor kwargs `dpo_*`)."""

    beta: float = 0.1
    learning_rate: float = 5e-6
    epochs: float = 1.0
    max_steps: int = 0  # 0: run the epochs
    batch_size: int = 2


@dataclass
class DpoOutcome:
    """What the stage measured; `finite` is false when the loss or the margin diverged."""

    margin_before: float
    margin_after: float
    steps: int
    cancelled: bool
    finite: bool
    pairs: int = 0  # pairs trained on: those with answer tokens within max_length
