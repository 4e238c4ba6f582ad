"""The deployment settings as the gate, the canary and the rollback monitor take them."""

from __future__ import annotations

from deployment.canary import CanaryPolicy, HealthLimits
from deployment.evaluate import GateConfig
from sam_brain.config import Config


def gate_config(config: Config) -> GateConfig:
    d = config.deployment
    return GateConfig(
        margin=d.gate_margin,
        alpha=d.gate_alpha,
        prompts=d.gate_prompts,
        max_length=config.profile().max_seq_length,
        max_repetition=d.gate_max_repetition,
        min_terminated=d.gate_min_terminated,
        relative_slack=d.gate_relative_slack,
        case_max_tokens=d.gate_case_max_tokens,
    )


def canary_policy(config: Config) -> CanaryPolicy:
    d = config.deployment
    return CanaryPolicy(
        steps=tuple(d.canary_steps),
        interval_seconds=d.canary_interval_seconds,
        min_requests=d.canary_min_requests,
        limits=health_limits(config),
    )


def health_limits(config: Config) -> HealthLimits:
    return HealthLimits.from_config(
        config.deployment, min_requests=config.deployment.min_requests_to_judge
    )
