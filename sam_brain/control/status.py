"""The `/api/self` status document, built from a home (and the coordinator when the daemon runs).

The shape follows the SAM doc users already script against (`training_stats` with
`model_version`, `deployed_at`, `last_training`, `training_data`, `deployment`: the default
training's), plus fields of ours, among them `trainings`: one summary per training. `samctl status` prints the same document, from the daemon or, when it is down, the home.
"""

from __future__ import annotations

from typing import Any

from deployment.canary import canary_state
from sam_brain.doctor import DAMAGED
from sam_brain.errors import StateDamaged
from sam_brain.home import Home, pool_damaged
from sam_brain.train.dataset import new_samples_since_last_run
from sam_brain.trainings import model_id

_NO_STATS: dict[str, Any] = {"total": 0, "trainable": 0, "by_source": {}, "pool_version": None}
"""What the counts read as while the pool is damaged (the problem is listed beside them)."""


def damaged_rollback(home: Home) -> str | None:
    """The line saying the active version (or the base) serves because an adapter was damaged,
    while that automatic rollback is still what serves."""
    events = home.store.events("rollback", limit=1)
    active = home.versions.current()
    if not events:
        return None
    data = events[0]["data"]
    reason = str(data.get("reason", ""))
    if not reason.startswith(DAMAGED) or data.get("to") != (active.version if active else None):
        return None
    return f"{reason}; rolled back to {data.get('to') or 'the base'}"


def training_summary(home: Home) -> dict[str, Any]:
    """One training's line in `/api/self`'s `trainings` list (its lineage and its threshold)."""
    active = home.versions.current()
    last = home.store.last_run()
    running = canary_state(home.versions)
    try:
        new: int | None = new_samples_since_last_run(home)
    except (StateDamaged, RuntimeError, OSError):  # listed once in `problems` already
        new = None
    need = home.config.training.min_for_training
    return {
        "name": home.training,
        "model": model_id(home.training),
        "model_version": active.version if active else "base",
        "deployed_at": active.deployed_at if active else None,
        "versions": len(home.store.versions()),
        "canary": {"version": running.version, "percent": running.percent} if running else None,
        "last_training": {"run_id": last.run_id, "status": last.status} if last else None,
        "new_samples": new,
        "min_for_training": need,
        "ready_to_train": new is not None and new >= need,
    }


def self_status(home: Home, *, daemon: dict[str, Any] | None = None) -> dict[str, Any]:
    cfg = home.config
    active = home.versions.current()
    last = home.store.last_run()
    problems = list(home.notices)
    healed = damaged_rollback(home)
    if healed:
        problems.append(healed)
    try:
        stats = home.pool.stats()
        new = new_samples_since_last_run(home)
    except StateDamaged as err:
        stats, new = _NO_STATS, 0
        problems.append(str(err))
    except (RuntimeError, OSError) as err:  # a data file went bad after the pool opened
        stats, new = _NO_STATS, 0
        problems.append(str(pool_damaged(home.data / "pool", str(err))))
    versions = home.store.versions()
    running = canary_state(home.versions)
    daemon_up = daemon is not None
    version = active.version if active else "base"
    explanation = (
        f"I am SAM Brain. I serve {version} and learn from your own work: "
        f"{stats['total']} samples collected, {new} new since my last training "
        f"({cfg.training.min_for_training} needed)."
    )
    if problems:
        explanation += " Problems: " + " | ".join(problems)
    return {
        "success": True,
        "explanation": explanation,
        "problems": problems,
        "status": {
            "daemon": "running" if daemon_up else "stopped",
            **(daemon or {}),
            "data_dir": str(home.data),
        },
        "training_stats": {
            "model_version": version,
            # "passed", or "ungated": went live without a gate verdict (too little held-out data)
            "model_gate": (active.gate or "unjudged") if active else None,
            "deployed_at": active.deployed_at if active else None,
            "last_training": {
                "run_id": last.run_id if last else None,
                "samples_count": last.samples_count if last else 0,
                "status": last.status if last else None,
                "reason": last.reason if last else "",
                # "resumed from step N ...", "started over instead of resuming ...", memory fit
                "notes": last.notes if last else [],
            },
            "training_data": {
                "total_samples": stats["total"],
                "trainable_samples": stats["trainable"],
                "new_samples": new,
                "min_for_training": cfg.training.min_for_training,
                "ready_to_train": new >= cfg.training.min_for_training,
                "distilled_samples": stats["by_source"].get("distill", 0),
                "pool_version": stats["pool_version"],
            },
            "deployment": {
                "total_versions": len(versions),
                "rollback_available": home.versions.rollback_target() is not None
                or running is not None,
                "canary_active": running is not None,
                "canary": {
                    "version": running.version,
                    "gate": home.versions.get(running.version).gate or "unjudged",
                    "percent": running.percent,
                    "since": running.since,
                }
                if running
                else None,
            },
        },
        # The default training ("sam", above) first, then each `[trainings.NAME]`.
        "trainings": [training_summary(h) for h in home.trainings()],
    }
