"""Per-step loss points of every run, kept so a dashboard can draw the curves after the fact.

The worker streams `Progress` to the supervisor; `TrainingJob` passes each report here. The
points live in their own table of the state database (created on first use, so `store.py` needs no
change), one row per (run, step): the training loss of that step and, on evaluation steps, the
validation loss. Points of runs that no longer exist are dropped when a new run starts writing.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sam_brain.protocols import Progress
from sam_brain.store import Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS loss_points (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    train_loss REAL,
    val_loss REAL,
    tokens_per_sec REAL,
    ts REAL NOT NULL,
    PRIMARY KEY (run_id, step)
)
"""
MAX_POINTS = 5000  # per run: a long run keeps every step up to this, then evenly thinned on read


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def record_progress(store: Store, run_id: str, p: Progress) -> None:
    """Store one progress report's losses (a report without a loss stores nothing).

    Backends repeat the last validation loss in every report; it is stored only on the step that
    measured it (the report says "validation loss ...") so the curve shows real evaluations.
    """
    train = _finite(p.train_loss)
    val = _finite(p.val_loss) if p.message.startswith("validation") else None
    if train is None and val is None:
        return
    with store.tx() as db:
        db.execute(SCHEMA)
        first = db.execute("SELECT 1 FROM loss_points WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
        if first is None:  # a new run: forget the points of runs pruned since
            db.execute("DELETE FROM loss_points WHERE run_id NOT IN (SELECT run_id FROM runs)")
        db.execute(
            "INSERT INTO loss_points(run_id, step, train_loss, val_loss, tokens_per_sec, ts)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(run_id, step) DO UPDATE SET"
            " train_loss=COALESCE(excluded.train_loss, train_loss),"
            " val_loss=COALESCE(excluded.val_loss, val_loss),"
            " tokens_per_sec=COALESCE(excluded.tokens_per_sec, tokens_per_sec), ts=excluded.ts",
            (run_id, p.step, train, val, _finite(p.tokens_per_sec), time.time()),
        )


def _thin(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """At most `limit` rows, evenly spaced, keeping every validation point and the last row."""
    if len(rows) <= limit:
        return rows
    stride = math.ceil(len(rows) / limit)
    return [
        r
        for i, r in enumerate(rows)
        if i % stride == 0 or r["val_loss"] is not None or i == len(rows) - 1
    ]


def loss_curve(store: Store, run_id: str, limit: int = MAX_POINTS) -> dict[str, Any]:
    """A run's points in step order and its best step (lowest validation loss, else None)."""
    with store.tx() as db:
        db.execute(SCHEMA)
        cur = db.execute(
            "SELECT step, train_loss, val_loss, tokens_per_sec, ts FROM loss_points"
            " WHERE run_id=? ORDER BY step",
            (run_id,),
        )
        rows = [dict(r) for r in cur.fetchall()]
    best: dict[str, Any] | None = None
    for r in rows:
        if r["val_loss"] is not None and (best is None or r["val_loss"] < best["val_loss"]):
            best = {"step": r["step"], "val_loss": r["val_loss"]}
    return {
        "run_id": run_id,
        "count": len(rows),
        "points": _thin(rows, limit),
        "best": best,
    }
