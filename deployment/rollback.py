"""Automatic rollback: take a version back when its serving metrics break the health limits.

`RollbackMonitor.check()` is what the daemon's scheduler calls every few seconds. It reads the
serving metrics of the active and the canary version (from `ChatServer.metrics`, or any callable
returning `{version: VersionMetrics}`) and judges them with `canary.health_problems`: a sick canary
is aborted (weight 0, status `rejected`, the active version untouched, as Argo Rollouts' abort);
a sick active version is rolled back to the last good one with `Versions.rollback(reason="auto:
...")`. Both write an event carrying the reason. When there is nothing to roll back to, a
`rollback_unavailable` event says so once per version instead of failing every tick.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from deployment import canary
from deployment.canary import HealthLimits, health_problems
from deployment.serving_metrics import VersionMetrics
from sam_brain.versions import Versions

log = logging.getLogger(__name__)

MetricsSource = Callable[[], Mapping[str, VersionMetrics]]


@dataclass(frozen=True)
class Action:
    """What one check did: `kind` is "abort" (canary) or "rollback" (active)."""

    kind: str
    version: str
    reason: str
    to_version: str | None = None


class RollbackMonitor:
    """Checks the serving versions against `HealthLimits` and takes sick ones back."""

    def __init__(
        self, versions: Versions, metrics: MetricsSource, limits: HealthLimits | None = None
    ) -> None:
        """Args:
        versions: The registry to act on.
        metrics: Returns the current metrics window per version name.
        limits: The limits; defaults to 15 % errors, 5000 ms mean latency, 6144 MB.
        """
        self.versions = versions
        self.metrics = metrics
        self.limits = limits or HealthLimits()
        self._unavailable_reported: set[str] = set()

    def check(self) -> list[Action]:
        """Judge the canary, then the active version; act on the ones over a limit.

        Returns:
            The actions taken (empty when everything is healthy or not yet judgeable).
        """
        snapshot = self.metrics()
        actions: list[Action] = []
        running = canary.canary_state(self.versions)
        if running is not None and running.version in snapshot:
            problems = health_problems(snapshot[running.version], self.limits)
            if problems:
                reason = "auto: " + "; ".join(problems)
                canary.abort(self.versions, reason=reason)
                log.warning("canary %s aborted: %s", running.version, reason)
                actions.append(Action("abort", running.version, reason))
        active = self.versions.current()
        if active is not None and active.version in snapshot:
            problems = health_problems(snapshot[active.version], self.limits)
            if problems:
                action = self._roll_back(active.version, "auto: " + "; ".join(problems))
                if action is not None:
                    actions.append(action)
        return actions

    def _roll_back(self, version: str, reason: str) -> Action | None:
        target = self.versions.rollback_target()
        if target is None:
            if version not in self._unavailable_reported:
                self._unavailable_reported.add(version)
                self.versions.store.add_event(
                    "rollback_unavailable", {"version": version, "reason": reason}
                )
                log.error("%s is unhealthy (%s) but no earlier version exists", version, reason)
            return None
        back = self.versions.rollback(target.version, reason=reason)
        log.warning("rolled back %s -> %s: %s", version, back.version, reason)
        return Action("rollback", version, reason, to_version=back.version)
