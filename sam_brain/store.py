"""Durable daemon state in SQLite, the queries: training runs, versions, the canary, cursors,
counters and events (the file's schema and migrations are `store_schema.py`).

WAL mode lets the CLI read (and make small transactional changes, like a rollback) while the
daemon runs; every multi-row change is one transaction, so a kill at any moment leaves either the
old state or the new one. Sample content lives in the LanceDB pool (`pool.py`), not here.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from sam_brain.config import DEFAULT_TRAINING
from sam_brain.errors import NotFound
from sam_brain.store_schema import connect, damaged, stored_path

__all__ = ["CanaryWeight", "Run", "Store", "Version", "VersionStatus", "now_iso", "stored_path"]


class VersionStatus(StrEnum):
    """A version row's status; the values are what SQLite and versions.json store."""

    ACTIVE = "active"
    INACTIVE = "inactive"
    CANARY = "canary"
    ROLLED_BACK = "rolled_back"
    REJECTED = "rejected"


@dataclass(frozen=True)
class CanaryWeight:
    """The running canary's share of conversations, kept beside its version row."""

    version: str
    percent: int
    since: str  # when the current weight was set (ISO-8601)


def now_iso() -> str:
    """UTC timestamp in ISO-8601 with seconds precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Run:
    """A training run row."""

    run_id: str
    status: str
    reason: str
    trigger: str
    backend: str
    base_model: str
    samples_count: int
    pool_version: int
    attempt: int
    output_path: str
    progress: dict[str, Any]
    metrics: dict[str, Any]
    created_at: str
    started_at: str | None
    finished_at: str | None
    notes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    training: str = DEFAULT_TRAINING

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Version:
    """A registered adapter version row."""

    version: str
    seq: int
    status: VersionStatus
    run_id: str
    base_model: str
    adapter_path: str
    checksum: str
    training_samples: int
    metrics: dict[str, Any]
    description: str
    created_at: str
    deployed_at: str | None
    gate: str = ""  # "passed", "ungated" (too little held-out data to judge) or "" (not judged)
    training: str = DEFAULT_TRAINING

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _run(row: sqlite3.Row) -> Run:
    d = dict(row)
    d["progress"] = json.loads(d["progress"])
    d["metrics"] = json.loads(d["metrics"])
    d["notes"] = json.loads(d.get("notes") or "[]")
    return Run(**d)


def _version(row: sqlite3.Row, data: Path) -> Version:
    d = dict(row)
    d["metrics"] = json.loads(d["metrics"])
    d["status"] = VersionStatus(d["status"])
    d["adapter_path"] = str(data / d["adapter_path"])  # stored relative; an absolute one stays
    return Version(**d)


class Store:
    """The SQLite state store; safe to share between threads of one process.

    Runs, versions and the canary belong to one named training (`training`, the default's
    "sam"); `scoped(NAME)` is a view on the same connection for another training's lineage.
    Events, cursors and counters are the home's, shared by every view.
    """

    training: str = DEFAULT_TRAINING

    def scoped(self, training: str) -> Store:
        """This store seen from `training`'s lineage (same file, connection and lock)."""
        view = copy.copy(self)
        view.training = training
        return view

    def __init__(self, path: Path) -> None:
        """Open (or create) the store, checking its integrity first.

        Raises:
            StateDamaged: The file is not SQLite, or `PRAGMA quick_check` finds damage.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = connect(path)
        except sqlite3.DatabaseError as err:
            raise damaged(path, str(err)) from err

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # -- events ----------------------------------------------------------------------------------

    def add_event(
        self, kind: str, data: dict[str, Any] | None = None, db: sqlite3.Connection | None = None
    ) -> None:
        sql = "INSERT INTO events(ts, kind, data) VALUES (?, ?, ?)"
        args = (now_iso(), kind, json.dumps(data or {}, default=str))
        if db is not None:
            db.execute(sql, args)
            return
        with self.tx() as tx:
            tx.execute(sql, args)

    def prune_events(self, keep_days: float) -> int:
        """Delete events older than `keep_days` (0 keeps all); returns how many went."""
        if keep_days <= 0:
            return 0
        cutoff = datetime.fromtimestamp(time.time() - keep_days * 86400, UTC)
        with self.tx() as db:
            cur = db.execute(
                "DELETE FROM events WHERE ts < ?", (cutoff.replace(microsecond=0).isoformat(),)
            )
            return cur.rowcount

    def events(self, kind: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        if kind:
            rows = self._query(
                "SELECT * FROM events WHERE kind=? ORDER BY id DESC LIMIT ?", (kind, limit)
            )
        else:
            rows = self._query("SELECT * FROM events ORDER BY id DESC LIMIT ?", (limit,))
        return [
            {"id": r["id"], "ts": r["ts"], "kind": r["kind"], "data": json.loads(r["data"])}
            for r in rows
        ]

    # -- cursors ---------------------------------------------------------------------------------

    def get_cursor(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM cursors WHERE key=?", (key,))
        return str(rows[0]["value"]) if rows else None

    def cursors_with_prefix(self, prefix: str) -> dict[str, str]:
        """Every cursor whose key starts with `prefix` (per-file ingest coverage, for example)."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        rows = self._query(
            "SELECT key, value FROM cursors WHERE key LIKE ? ESCAPE '\\'", (escaped + "%",)
        )
        return {str(r["key"]): str(r["value"]) for r in rows}

    def set_cursors(self, values: dict[str, str], db: sqlite3.Connection | None = None) -> None:
        if not values:
            return
        rows = [(k, v, now_iso()) for k, v in values.items()]
        sql = (
            "INSERT INTO cursors(key, value, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value=excluded.value, updated_at=excluded.updated_at"
        )
        if db is not None:
            db.executemany(sql, rows)
            return
        with self.tx() as tx:
            tx.executemany(sql, rows)

    # -- canary ----------------------------------------------------------------------------------

    def canary(self) -> CanaryWeight | None:
        rows = self._query(
            "SELECT version, percent, since FROM canaries WHERE training=?", (self.training,)
        )
        if not rows:
            return None
        r = rows[0]
        return CanaryWeight(str(r["version"]), int(r["percent"]), str(r["since"]))

    def set_canary(self, weight: CanaryWeight | None, db: sqlite3.Connection) -> None:
        """Write (or with None, clear) the canary's weight inside the caller's transaction."""
        db.execute("DELETE FROM canaries WHERE training=?", (self.training,))
        if weight is not None:
            db.execute(
                "INSERT INTO canaries(training, version, percent, since) VALUES (?, ?, ?, ?)",
                (self.training, weight.version, weight.percent, weight.since),
            )

    # -- counters --------------------------------------------------------------------------------

    def add_counts(self, prefix: str, counts: dict[str, int]) -> None:
        """Add to cumulative counters (ingest skips and drops by reason)."""
        rows = [(f"{prefix}:{k}", int(v)) for k, v in counts.items() if v]
        if not rows:
            return
        with self.tx() as db:
            db.executemany(
                "INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name)"
                " DO UPDATE SET value = value + excluded.value",
                rows,
            )

    def counters(self, prefix: str) -> dict[str, int]:
        rows = self._query(
            "SELECT name, value FROM counters WHERE name LIKE ? ORDER BY name", (prefix + ":%",)
        )
        return {str(r["name"])[len(prefix) + 1 :]: int(r["value"]) for r in rows}

    # -- runs ------------------------------------------------------------------------------------

    def create_run(
        self,
        trigger: str,
        backend: str,
        base_model: str,
        samples_count: int,
        pool_version: int,
        attempt: int = 1,
    ) -> Run:
        run_id = (
            datetime.now(UTC).strftime("%Y%m%d_%H%M%S_") + f"{int(time.time_ns()) % 1000000:06d}"
        )
        with self.tx() as db:
            db.execute(
                "INSERT INTO runs(run_id, status, trigger, backend, base_model, samples_count,"
                " pool_version, attempt, created_at, training)"
                " VALUES (?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    trigger,
                    backend,
                    base_model,
                    samples_count,
                    pool_version,
                    attempt,
                    now_iso(),
                    self.training,
                ),
            )
            self.add_event(
                "run_created", {"run_id": run_id, "trigger": trigger, "training": self.training}, db
            )
        return self.get_run(run_id)

    def update_run(self, run_id: str, **fields: Any) -> None:
        for key in ("progress", "metrics", "notes"):
            if key in fields:
                fields[key] = json.dumps(fields[key], default=str)
        cols = ", ".join(f"{k}=?" for k in fields)
        with self.tx() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE run_id=?", (*fields.values(), run_id))
            if "status" in fields:
                self.add_event(
                    "run_" + str(fields["status"]),
                    {"run_id": run_id, "reason": fields.get("reason", "")},
                    db,
                )

    def get_run(self, run_id: str) -> Run:
        rows = self._query("SELECT * FROM runs WHERE run_id=?", (run_id,))
        if not rows:
            raise NotFound(f"no training run {run_id!r}")
        return _run(rows[0])

    def runs(self, limit: int = 20) -> list[Run]:
        return [
            _run(r)
            for r in self._query(
                "SELECT * FROM runs WHERE training=? ORDER BY created_at DESC, rowid DESC LIMIT ?",
                (self.training, limit),
            )
        ]

    def last_run(self) -> Run | None:
        runs = self.runs(1)
        return runs[0] if runs else None

    def run_counts(self, since: str = "") -> dict[str, int]:
        """Runs by status, of all time or created at or after the ISO time `since`."""
        rows = self._query(
            "SELECT status, COUNT(*) AS n FROM runs WHERE created_at >= ? AND training=?"
            " GROUP BY status ORDER BY status",
            (since, self.training),
        )
        return {str(r["status"]): int(r["n"]) for r in rows}

    def fail_interrupted_runs(self) -> int:
        """Mark runs left 'training'/'pending' by a dead daemon as failed; returns how many."""
        with self.tx() as db:
            cur = db.execute(
                "UPDATE runs SET status='failed', reason='daemon stopped during the run',"
                " finished_at=? WHERE status IN ('pending', 'training')",
                (now_iso(),),
            )
            return cur.rowcount

    # -- versions --------------------------------------------------------------------------------

    def versions(self) -> list[Version]:
        return [
            _version(r, self.path.parent)
            for r in self._query(
                "SELECT * FROM versions WHERE training=? ORDER BY seq", (self.training,)
            )
        ]

    def get_version(self, version: str) -> Version:
        rows = self._query(
            "SELECT * FROM versions WHERE version=? AND training=?", (version, self.training)
        )
        if not rows:
            known = ", ".join(v.version for v in self.versions()) or "none"
            other = self._query("SELECT training FROM versions WHERE version=?", (version,))
            where = f" in training {self.training!r}" if self.training != DEFAULT_TRAINING else ""
            if other:  # lineages never cross: name the one it belongs to
                known += f"; {version} belongs to training {other[0]['training']!r}"
            raise NotFound(f"no version {version!r}{where} (known: {known})")
        return _version(rows[0], self.path.parent)

    def active_version(self) -> Version | None:
        rows = self._query(
            "SELECT * FROM versions WHERE status='active' AND training=? ORDER BY seq DESC LIMIT 1",
            (self.training,),
        )
        return _version(rows[0], self.path.parent) if rows else None

    def next_seq(self) -> int:
        rows = self._query(
            "SELECT COALESCE(MAX(seq), -1) + 1 AS n FROM versions WHERE training=?",
            (self.training,),
        )
        return int(rows[0]["n"])
