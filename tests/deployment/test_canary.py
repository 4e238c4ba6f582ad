"""Canary routing, steps and transitions, and the automatic rollback monitor, on a real store."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from deployment import canary
from deployment.canary import CanaryPolicy, HealthLimits
from deployment.rollback import RollbackMonitor
from deployment.serving_metrics import VersionMetrics
from sam_brain.errors import BadRequest, Conflict
from sam_brain.store import Store
from sam_brain.versions import Versions


def make_adapter(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapters.safetensors").write_bytes(payload)
    (path / "adapter_config.json").write_text('{"rank": 4}')
    return path


@pytest.fixture
def versions(tmp_path: Path) -> Versions:
    """v1.0.0 active, v1.0.1 and v1.0.2 registered (inactive)."""
    vs = Versions(Store(tmp_path / "state.db"), tmp_path / "versions")
    for i in range(3):
        vs.register(make_adapter(tmp_path / f"a{i}", f"w{i}".encode()))
    vs.activate("v1.0.0")
    return vs


def statuses(vs: Versions) -> dict[str, str]:
    return {v.version: v.status for v in vs.store.versions()}


def metrics(
    version: str,
    requests: int,
    errors: int = 0,
    latency: float = 100.0,
    memory: float = 500.0,
    since: float | None = None,
) -> VersionMetrics:
    m = VersionMetrics(version, since=time.time() if since is None else since)
    for i in range(requests):
        m.record(latency, i < errors, memory)
    return m


def test_routing_share_is_close_to_the_weight_and_sticky() -> None:
    keys = [f"conversation-{i}" for i in range(20000)]
    at10 = {k for k in keys if canary.routes_to_canary(k, "v1.0.1", 10)}
    at50 = {k for k in keys if canary.routes_to_canary(k, "v1.0.1", 50)}
    assert abs(len(at10) / len(keys) - 0.10) < 0.01
    assert abs(len(at50) / len(keys) - 0.50) < 0.015
    assert at10 <= at50  # raising the weight never moves a conversation off the canary
    assert {k for k in keys if canary.routes_to_canary(k, "v1.0.1", 10)} == at10  # sticky
    assert not any(canary.routes_to_canary(k, "v1.0.1", 0) for k in keys[:1000])
    assert all(canary.routes_to_canary(k, "v1.0.1", 100) for k in keys[:1000])
    other = {k for k in keys if canary.routes_to_canary(k, "v1.0.2", 10)}
    assert len(other & at10) < len(at10) * 0.2  # a new canary samples different conversations


def test_start_set_weight_and_promote(versions: Versions) -> None:
    state = canary.start_canary(versions, "v1.0.1", 10)
    assert (state.version, state.percent) == ("v1.0.1", 10)
    assert statuses(versions) == {"v1.0.0": "active", "v1.0.1": "canary", "v1.0.2": "inactive"}
    assert canary.set_weight(versions, 50).percent == 50
    assert canary.canary_state(versions).percent == 50  # type: ignore[union-attr]
    promoted = canary.promote(versions)
    assert promoted.status == "active" and promoted.deployed_at
    assert statuses(versions) == {"v1.0.0": "inactive", "v1.0.1": "active", "v1.0.2": "inactive"}
    assert canary.canary_state(versions) is None
    assert (versions.root / "current.txt").read_text().strip() == "v1.0.1"
    assert versions.rollback_target().version == "v1.0.0"  # type: ignore[union-attr]
    kinds = [e["kind"] for e in versions.store.events(limit=3)]
    assert kinds == ["canary_promoted", "canary_weight", "canary_started"]


def test_abort_rejects_the_canary_and_keeps_the_active(versions: Versions) -> None:
    canary.start_canary(versions, "v1.0.1", 10)
    rejected = canary.abort(versions, reason="looked wrong")
    assert rejected.status == "rejected"
    assert versions.current().version == "v1.0.0"  # type: ignore[union-attr]
    assert versions.store.events("canary_aborted")[0]["data"]["reason"] == "looked wrong"
    with pytest.raises(Conflict, match="rejected"):
        canary.start_canary(versions, "v1.0.1", 10)
    assert versions.rollback_target() is None  # a rejected canary is never a rollback target


def test_a_version_failing_the_gate_is_rejected(versions: Versions) -> None:
    v = canary.reject(versions, "v1.0.2", reason="gate: candidate mean loss 2.1 is not below 2.0")
    assert v.status == "rejected"
    assert versions.store.events("version_rejected")[0]["data"]["version"] == "v1.0.2"
    with pytest.raises(Conflict, match="active"):
        canary.reject(versions, "v1.0.0", reason="x")
    with pytest.raises(Conflict, match="rejected"):
        canary.start_canary(versions, "v1.0.2", 10)


def test_start_canary_refusals(versions: Versions, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match=r"1\.\.100"):
        canary.start_canary(versions, "v1.0.1", 0)
    with pytest.raises(Conflict, match="inactive"):
        canary.start_canary(versions, "v1.0.0", 10)  # the active one
    canary.start_canary(versions, "v1.0.1", 10)
    with pytest.raises(Conflict, match="still running"):
        canary.start_canary(versions, "v1.0.2", 10)
    with pytest.raises(Conflict, match="no canary"):
        canary.abort(Versions(Store(tmp_path / "other.db"), tmp_path / "other"))
    empty = Versions(Store(tmp_path / "e.db"), tmp_path / "e")
    empty.register(make_adapter(tmp_path / "e0", b"x"))
    # No active version (an ungated first version): the canary runs beside the base model.
    assert canary.start_canary(empty, "v1.0.0", 10).percent == 10
    assert empty.current() is None and canary.canary_state(empty).version == "v1.0.0"  # type: ignore[union-attr]
    assert canary.abort(empty).status == "rejected" and empty.current() is None


def test_evaluate_step_holds_promotes_and_aborts() -> None:
    policy = CanaryPolicy(interval_seconds=60, min_requests=20)
    t0 = 1000.0
    assert canary.evaluate_step(metrics("c", 30, since=t0), policy, now=t0 + 30) == "hold"
    assert canary.evaluate_step(metrics("c", 19, since=t0), policy, now=t0 + 90) == "hold"
    assert canary.evaluate_step(metrics("c", 20, since=t0), policy, now=t0 + 60) == "promote"
    sick = metrics("c", 20, errors=4, since=t0)  # 20 % > 15 %
    assert canary.evaluate_step(sick, policy, now=t0 + 90) == "abort"
    slow = metrics("c", 10, latency=6000, since=t0)
    assert canary.evaluate_step(slow, policy, now=t0 + 1) == "abort"
    with pytest.raises(BadRequest, match="increase"):
        CanaryPolicy(steps=(50, 10))


def test_advance_climbs_the_steps_then_promotes(versions: Versions) -> None:
    policy = CanaryPolicy(steps=(10, 50, 100), interval_seconds=0, min_requests=5)
    canary.start_canary(versions, "v1.0.1", 10)
    later = time.time() + 5
    seen = []
    for _ in range(3):
        seen.append(canary.canary_state(versions).percent)  # type: ignore[union-attr]
        assert canary.advance(versions, metrics("v1.0.1", 5), policy, now=later) == "promote"
    assert seen == [10, 50, 100]
    assert versions.current().version == "v1.0.1"  # type: ignore[union-attr]
    assert canary.advance(versions, None, policy) is None  # nothing left to judge
    weights = [e["data"]["to"] for e in reversed(versions.store.events("canary_weight"))]
    assert weights == [50, 100]


def test_advance_holds_without_traffic_and_aborts_when_sick(versions: Versions) -> None:
    policy = CanaryPolicy(interval_seconds=0, min_requests=5)
    canary.start_canary(versions, "v1.0.1", 10)
    assert canary.advance(versions, None, policy) == "hold"
    assert canary.advance(versions, metrics("v1.0.1", 10, errors=5), policy) == "abort"
    assert statuses(versions)["v1.0.1"] == "rejected"
    reason = versions.store.events("canary_aborted")[0]["data"]["reason"]
    assert reason.startswith("auto: error rate 50.0%")


def test_monitor_aborts_a_sick_canary(versions: Versions) -> None:
    canary.start_canary(versions, "v1.0.1", 10)
    snapshot = {"v1.0.0": metrics("v1.0.0", 50), "v1.0.1": metrics("v1.0.1", 10, errors=2)}
    monitor = RollbackMonitor(versions, lambda: snapshot, HealthLimits(min_requests=10))
    actions = monitor.check()
    assert [(a.kind, a.version) for a in actions] == [("abort", "v1.0.1")]
    assert "error rate 20.0% > 15.0%" in actions[0].reason
    assert statuses(versions)["v1.0.1"] == "rejected"
    assert versions.current().version == "v1.0.0"  # type: ignore[union-attr]
    assert monitor.check() == []  # nothing left to act on


def test_monitor_rolls_back_a_slow_or_bloated_active_version(versions: Versions) -> None:
    versions.activate("v1.0.1")
    snapshot = {"v1.0.1": metrics("v1.0.1", 12, latency=5200)}
    monitor = RollbackMonitor(versions, lambda: snapshot)
    [action] = monitor.check()
    assert (action.kind, action.version, action.to_version) == ("rollback", "v1.0.1", "v1.0.0")
    assert statuses(versions)["v1.0.1"] == "rolled_back"
    event = versions.store.events("rollback")[0]["data"]
    assert event["reason"] == "auto: mean latency 5200 ms > 5000 ms"
    # Memory is judged from the first request on.
    versions.activate("v1.0.2")
    bloated = {"v1.0.2": metrics("v1.0.2", 1, memory=7000)}
    [action] = RollbackMonitor(versions, lambda: bloated).check()
    assert action.reason == "auto: memory 7000 MB > 6144 MB"
    assert versions.current().version == "v1.0.0"  # type: ignore[union-attr]


def test_monitor_waits_for_enough_requests_and_reports_no_target_once(tmp_path: Path) -> None:
    vs = Versions(Store(tmp_path / "s.db"), tmp_path / "v")
    vs.register(make_adapter(tmp_path / "a", b"w"))
    vs.activate("v1.0.0")
    few = {"v1.0.0": metrics("v1.0.0", 9, errors=9)}
    assert RollbackMonitor(vs, lambda: few).check() == []
    many = {"v1.0.0": metrics("v1.0.0", 10, errors=9)}
    monitor = RollbackMonitor(vs, lambda: many)
    assert monitor.check() == [] and monitor.check() == []
    assert len(vs.store.events("rollback_unavailable")) == 1
    assert vs.current().version == "v1.0.0"  # type: ignore[union-attr]


def test_a_home_made_before_the_canary_table_keeps_its_canary(tmp_path: Path) -> None:
    # Older homes kept the weight as a JSON row in `cursors`; opening the store moves it.
    vs = Versions(Store(tmp_path / "state.db"), tmp_path / "versions")
    for i in range(2):
        vs.register(make_adapter(tmp_path / f"a{i}", f"w{i}".encode()))
    vs.activate("v1.0.0")
    with vs.store.tx() as db:
        db.execute("UPDATE versions SET status='canary' WHERE version='v1.0.1'")
        db.execute("DROP TABLE canaries")  # the per-training table since named trainings
    old = {"version": "v1.0.1", "percent": 50, "since": "2026-01-02T03:04:05+00:00"}
    vs.store.set_cursors({"deployment.canary": json.dumps(old)})
    vs.store.close()
    reopened = Versions(Store(tmp_path / "state.db"), tmp_path / "versions")
    state = canary.canary_state(reopened)
    assert state is not None
    assert (state.version, state.percent, state.since) == (
        "v1.0.1",
        50,
        "2026-01-02T03:04:05+00:00",
    )
    assert reopened.store.get_cursor("deployment.canary") is None  # moved, not copied
    promoted = canary.promote(reopened)
    assert promoted.status == "active"
    assert reopened.store.canary() is None  # leaving the canary status clears its weight


def test_an_old_home_with_an_empty_canary_cursor_has_no_canary(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.set_cursors({"deployment.canary": "{}", "git:/repo": "abc"})
    store.close()
    reopened = Store(tmp_path / "state.db")
    assert reopened.canary() is None
    assert reopened.get_cursor("deployment.canary") is None
    assert reopened.get_cursor("git:/repo") == "abc"  # other cursors untouched


def test_an_old_home_with_a_damaged_canary_cursor_still_opens(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.db")
    store.set_cursors({"deployment.canary": '{"version": "v1.0.1"'})  # cut off mid-write
    store.close()
    reopened = Store(tmp_path / "state.db")
    assert reopened.canary() is None
    assert reopened.get_cursor("deployment.canary") is None
