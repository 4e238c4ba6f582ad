"""Canary release of adapter versions: a share of chat traffic first, then all of it, or none.

The semantics follow Argo Rollouts and Flagger: a candidate starts as the `canary` at a weight
(percent of conversations), climbs the `CanaryPolicy.steps` (10 -> 50 -> 100 by default) each time a
step has lasted `interval_seconds`, served `min_requests` and stayed within the health limits, and
is then promoted to `active`; an unhealthy step aborts it (weight 0: the canary becomes `rejected`,
the active version never changed). The canary is the one version with status `canary`; its weight
lives in the store's `canary` table, written with the status by `Versions.transition`. Routing
is sticky: a conversation key hashes (with the canary's name) to a bucket in 0..9999, so a
conversation keeps its version while the weight only grows. `VersionMetrics`
(`deployment.serving_metrics`) and `HealthLimits` are shared with the server (which records) and
the rollback monitor (which judges); the judgement uses error rate, mean latency and memory only.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from deployment.serving_metrics import VersionMetrics
from sam_brain.errors import BadRequest, Conflict
from sam_brain.store import CanaryWeight, Version, VersionStatus, now_iso
from sam_brain.versions import Versions

Decision = Literal["promote", "hold", "abort"]


@dataclass(frozen=True)
class HealthLimits:
    """Serving limits a version must stay within (the automatic rollback triggers)."""

    max_error_rate: float = 0.15
    max_latency_ms: float = 5000.0
    max_memory_mb: float = 6144.0
    min_requests: int = 10  # error rate and latency are judged only after this many requests

    @classmethod
    def from_config(cls, deployment: Any, min_requests: int = 10) -> HealthLimits:
        """Limits from `config.DeploymentConfig` (duck-typed: any object with the three fields)."""
        return cls(
            max_error_rate=float(deployment.max_error_rate),
            max_latency_ms=float(deployment.max_latency_ms),
            max_memory_mb=float(deployment.max_memory_mb),
            min_requests=min_requests,
        )


def health_problems(metrics: VersionMetrics, limits: HealthLimits) -> list[str]:
    """Every limit the version broke, as readable reasons; empty when healthy or not judgeable.

    Memory is judged after a single request (it is a property of the process, not a rate);
    error rate and mean latency only after `limits.min_requests` requests.
    """
    problems = []
    if metrics.requests and metrics.memory_mb > limits.max_memory_mb:
        problems.append(f"memory {metrics.memory_mb:.0f} MB > {limits.max_memory_mb:.0f} MB")
    if metrics.requests >= limits.min_requests:
        if metrics.error_rate > limits.max_error_rate:
            problems.append(
                f"error rate {metrics.error_rate:.1%} > {limits.max_error_rate:.1%}"
                f" ({metrics.errors}/{metrics.requests} requests)"
            )
        if metrics.mean_latency_ms > limits.max_latency_ms:
            problems.append(
                f"mean latency {metrics.mean_latency_ms:.0f} ms > {limits.max_latency_ms:.0f} ms"
            )
    return problems


@dataclass(frozen=True)
class CanaryPolicy:
    """How a canary climbs: weights per step, how long and how much traffic each step needs."""

    steps: tuple[int, ...] = (10, 50, 100)
    interval_seconds: float = 300.0
    min_requests: int = 20  # requests the canary must serve in a step before it can advance
    limits: HealthLimits = HealthLimits()

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s <= 100 for s in self.steps):
            raise BadRequest(f"canary steps must be within 1..100, got {list(self.steps)}")
        if list(self.steps) != sorted(set(self.steps)):
            raise BadRequest(f"canary steps must increase, got {list(self.steps)}")

    def next_step(self, percent: int) -> int | None:
        """The weight after `percent`, or None when `percent` is the last step (promote)."""
        return next((s for s in self.steps if s > percent), None)


def evaluate_step(
    metrics: VersionMetrics, policy: CanaryPolicy, now: float | None = None
) -> Decision:
    """Judge the canary's current step from its metrics window.

    Returns:
        "abort" when a health limit is broken, "promote" (advance to the next step, or promote
        after the last) when the step lasted `interval_seconds` with at least `min_requests`
        requests, otherwise "hold".
    """
    if health_problems(metrics, policy.limits):
        return "abort"
    elapsed = (time.time() if now is None else now) - metrics.since
    if elapsed >= policy.interval_seconds and metrics.requests >= policy.min_requests:
        return "promote"
    return "hold"


def routes_to_canary(conversation_key: str, canary_version: str, percent: float) -> bool:
    """Sticky traffic split: True for about `percent`% of conversation keys.

    The bucket depends only on the key and the canary's name, so raising the weight keeps every
    conversation already on the canary there, and a new canary reshuffles who tries it first.
    """
    digest = hashlib.sha256(f"{canary_version}\x1f{conversation_key}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10000
    return bucket < round(percent * 100)


def canary_state(versions: Versions) -> CanaryWeight | None:
    """The running canary, or None. The version row's status is the source of truth."""
    canaries = [v for v in versions.store.versions() if v.status is VersionStatus.CANARY]
    if not canaries:
        return None
    v = canaries[-1]
    weight = versions.store.canary()
    if weight is None or weight.version != v.version:  # weight lost (edited by hand): serve none
        return CanaryWeight(v.version, 0, v.created_at)
    return weight


def start_canary(versions: Versions, version: str, percent: int) -> CanaryWeight:
    """Make a registered version the canary at `percent`% of conversations.

    Raises:
        BadRequest: `percent` is outside 1..100.
        Conflict: Another canary runs, or the version is not an inactive (registered, never
            rejected) one. With no active version the canary runs beside the base model.
        PromotionRejected: Its files no longer match their checksum.
    """
    _check_percent(percent)
    v = versions.get(version)
    running = canary_state(versions)
    if running is not None:
        raise Conflict(f"canary {running.version} is still running; promote or abort it first")
    if v.status is not VersionStatus.INACTIVE:
        raise Conflict(f"{version} is {v.status}; only an inactive version can become a canary")
    state = CanaryWeight(version, percent, now_iso())
    versions.transition(
        version,
        VersionStatus.CANARY,
        event="canary_started",
        data={"version": version, "percent": percent},
        canary=state,
    )
    return state


def set_weight(versions: Versions, percent: int, reason: str = "manual") -> CanaryWeight:
    """Change the running canary's share of conversations (one Argo `setWeight` step).

    Raises:
        BadRequest: `percent` is outside 1..100.
        Conflict: No canary is running.
    """
    _check_percent(percent)
    running = _running(versions)
    state = CanaryWeight(running.version, percent, now_iso())
    with versions.store.tx() as db:
        versions.store.set_canary(state, db)
        versions.store.add_event(
            "canary_weight",
            {"version": running.version, "from": running.percent, "to": percent, "reason": reason},
            db,
        )
    versions.write_index()
    return state


def promote(versions: Versions, reason: str = "manual") -> Version:
    """Make the canary the active version; the previous active one stays a rollback target.

    Raises:
        Conflict: No canary is running.
        PromotionRejected: The canary's files no longer match their checksum.
    """
    running = _running(versions)
    previous = versions.current()
    return versions.transition(
        running.version,
        VersionStatus.ACTIVE,
        event="canary_promoted",
        data={
            "version": running.version,
            "from": previous.version if previous else None,
            "percent": running.percent,
            "reason": reason,
        },
    )


def abort(versions: Versions, reason: str = "manual") -> Version:
    """Send the canary no more traffic: it becomes `rejected`; the active version is untouched.

    Raises:
        Conflict: No canary is running.
    """
    running = _running(versions)
    return versions.transition(
        running.version,
        VersionStatus.REJECTED,
        event="canary_aborted",
        data={"version": running.version, "percent": running.percent, "reason": reason},
    )


def reject(versions: Versions, version: str, reason: str) -> Version:
    """Mark a registered version that failed the gate `rejected`, so it is never deployed.

    Raises:
        Conflict: The version is not inactive (it serves, or was already judged).
    """
    v = versions.get(version)
    if v.status is not VersionStatus.INACTIVE:
        raise Conflict(f"{version} is {v.status}; only an inactive version can be rejected")
    return versions.transition(
        version,
        VersionStatus.REJECTED,
        event="version_rejected",
        data={"version": version, "reason": reason},
    )


def advance(
    versions: Versions,
    metrics: VersionMetrics | None,
    policy: CanaryPolicy,
    now: float | None = None,
) -> Decision | None:
    """One scheduler tick: judge the canary's step and apply the decision.

    Args:
        versions: The registry.
        metrics: The canary's serving metrics for the current step (None: it served nothing yet).
        policy: Steps, interval and limits.
        now: Clock override for tests.

    Returns:
        The decision taken, or None when no canary is running.
    """
    running = canary_state(versions)
    if running is None:
        return None
    if metrics is None or metrics.version != running.version:
        metrics = VersionMetrics(running.version, since=time.time() if now is None else now)
    # A step starts when its weight was written, even if the metrics window began earlier.
    step_start = datetime.fromisoformat(running.since).timestamp()
    if metrics.since < step_start:
        metrics = replace(metrics, since=step_start)
    decision = evaluate_step(metrics, policy, now)
    if decision == "abort":
        problems = "; ".join(health_problems(metrics, policy.limits))
        abort(versions, reason=f"auto: {problems}")
    elif decision == "promote":
        step = policy.next_step(running.percent)
        if step is None:
            promote(versions, reason=f"auto: passed the {running.percent}% step")
        else:
            set_weight(versions, step, reason=f"auto: passed the {running.percent}% step")
    return decision


def _running(versions: Versions) -> CanaryWeight:
    running = canary_state(versions)
    if running is None:
        raise Conflict("no canary is running")
    return running


def _check_percent(percent: int) -> None:
    if not isinstance(percent, int) or not 0 < percent <= 100:
        raise BadRequest(f"canary percent must be an integer within 1..100, got {percent!r}")
