"""The SQLite state file itself: its schema, the migrations that bring an older home's file up to
date, and opening it (integrity check, WAL). The queries on it live in `store.py`.

Each migration is idempotent and runs on every open, so a home made by any earlier release opens
unchanged; data-moving migrations run in one transaction each.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from sam_brain.errors import StateDamaged

VERSIONS = """
CREATE TABLE IF NOT EXISTS {name} (
    version TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,               -- active, inactive, canary, rolled_back, rejected
    run_id TEXT NOT NULL DEFAULT '',
    base_model TEXT NOT NULL DEFAULT '',
    adapter_path TEXT NOT NULL,
    checksum TEXT NOT NULL,
    training_samples INTEGER NOT NULL DEFAULT 0,
    metrics TEXT NOT NULL DEFAULT '{{}}',
    description TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    deployed_at TEXT,
    gate TEXT NOT NULL DEFAULT '',      -- passed, ungated (too little held-out data), or '' (unjudged)
    training TEXT NOT NULL DEFAULT 'sam', -- each named training numbers its own lineage
    UNIQUE (training, seq)
)"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,               -- pending, training, completed, failed, cancelled, interrupted
    reason TEXT NOT NULL DEFAULT '',    -- why it failed or was cancelled
    trigger TEXT NOT NULL DEFAULT '',   -- threshold, forced, nightly, retry
    backend TEXT NOT NULL DEFAULT '',
    base_model TEXT NOT NULL DEFAULT '',
    samples_count INTEGER NOT NULL DEFAULT 0,
    pool_version INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 1,
    output_path TEXT NOT NULL DEFAULT '',
    progress TEXT NOT NULL DEFAULT '{}',
    metrics TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT,
    notes TEXT NOT NULL DEFAULT '[]',   -- JSON list: resumed from step N, started over because..., memory fit
    fingerprint TEXT NOT NULL DEFAULT '', -- dataset + training config at run start (train/resume.py)
    training TEXT NOT NULL DEFAULT 'sam'  -- the named training whose lineage the run belongs to
);
{versions}

CREATE TABLE IF NOT EXISTS cursors (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS canaries (
    training TEXT PRIMARY KEY,          -- at most one canary per training
    version TEXT NOT NULL,
    percent INTEGER NOT NULL,
    since TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_kind ON events(kind, id);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,              -- e.g. skipped:sessions:truncated_line
    value INTEGER NOT NULL DEFAULT 0
);
""".replace("{versions}", VERSIONS.format(name="versions") + ";")


LEGACY_CANARY_KEY = "deployment.canary"
"""Where homes made before the `canary` table kept the canary's weight (in `cursors`)."""


def stored_path(path: Path, data: Path) -> str:
    """How an adapter path is stored: relative to the data folder when inside it, so a moved
    home keeps serving its versions."""
    try:
        return path.relative_to(data).as_posix()
    except ValueError:
        return str(path)


def damaged(path: Path, detail: str) -> StateDamaged:
    return StateDamaged(
        f"{path} is damaged ({detail}); versions are safe on disk: run `samctl doctor --repair`"
        " to set it aside and rebuild it from the version folders"
    )


def connect(path: Path) -> sqlite3.Connection:
    """Open the state file at `path`, check it and migrate it to the current schema.

    Raises:
        sqlite3.DatabaseError: The file is not SQLite or `PRAGMA quick_check` finds damage.
    """
    # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so writers queue, not deadlock.
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
    db.row_factory = sqlite3.Row
    try:
        problems = [str(r[0]) for r in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("; ".join(problems[:3]))
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=30000")
        migrate(db, path.parent)
    except BaseException:
        db.close()
        raise
    return db


def migrate(db: sqlite3.Connection, data: Path) -> None:
    """Create missing tables and bring columns and rows of older homes up to date."""
    for stmt in SCHEMA.split(";"):
        if stmt.strip():
            db.execute(stmt)
    _add_columns(db, "versions", (("gate", "''"),))  # before the gate verdict was kept
    _add_columns(db, "runs", (("notes", "'[]'"), ("fingerprint", "''")))  # before runs resumed
    _add_columns(db, "runs", (("training", "'sam'"),))  # before named trainings
    _migrate_versions(db)
    _migrate_single_canary(db)
    _migrate_canary(db)
    _migrate_paths(db, data)


def _add_columns(db: sqlite3.Connection, table: str, columns: tuple[tuple[str, str], ...]) -> None:
    have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
    for column, default in columns:
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT NOT NULL DEFAULT {default}")


def _migrate_versions(db: sqlite3.Connection) -> None:
    # Before named trainings a version's seq was unique in the home; now in its training. SQLite
    # cannot drop a UNIQUE constraint in place: copy the rows into a new table (one transaction).
    have = [r["name"] for r in db.execute("PRAGMA table_info(versions)")]
    if "training" in have:
        return
    cols = ", ".join(have)
    with _tx(db):
        db.execute("DROP TABLE IF EXISTS versions_new")
        db.execute(VERSIONS.format(name="versions_new"))
        db.execute(f"INSERT INTO versions_new({cols}) SELECT {cols} FROM versions")
        db.execute("DROP TABLE versions")
        db.execute("ALTER TABLE versions_new RENAME TO versions")


def _migrate_single_canary(db: sqlite3.Connection) -> None:
    # Before named trainings one `canary` row held the only canary: it is the default's.
    if not db.execute("SELECT 1 FROM sqlite_master WHERE name='canary'").fetchall():
        return
    with _tx(db):
        db.execute(
            "INSERT OR REPLACE INTO canaries(training, version, percent, since)"
            " SELECT 'sam', version, percent, since FROM canary"
        )
        db.execute("DROP TABLE canary")


def _migrate_paths(db: sqlite3.Connection, data: Path) -> None:
    # Homes made before paths were stored relative: rewrite rows that point into this home,
    # or into the home's old place when the folder of the same name is here now.
    changes: list[tuple[str, str]] = []
    for r in db.execute("SELECT version, adapter_path FROM versions").fetchall():
        path = Path(str(r["adapter_path"]))
        if not path.is_absolute():
            continue
        rel = stored_path(path, data)
        if rel == str(path) and (data / "versions" / path.name).is_dir():
            rel = f"versions/{path.name}"
        if rel != str(path):
            changes.append((rel, str(r["version"])))
    if changes:
        with _tx(db):
            db.executemany("UPDATE versions SET adapter_path=? WHERE version=?", changes)


def _migrate_canary(db: sqlite3.Connection) -> None:
    # Older homes kept the canary's weight as a JSON cursor row; move it into its own table.
    rows = db.execute("SELECT value FROM cursors WHERE key=?", (LEGACY_CANARY_KEY,)).fetchall()
    if not rows:
        return
    weight: tuple[str, int, str] | None
    try:
        data = json.loads(rows[0]["value"] or "{}")
        weight = (str(data["version"]), int(data["percent"]), str(data["since"]))
    except (ValueError, TypeError, KeyError):  # "{}" (none ran) or edited by hand: no weight
        weight = None
    with _tx(db):
        db.execute("DELETE FROM canaries WHERE training='sam'")
        if weight is not None:
            db.execute(
                "INSERT INTO canaries(training, version, percent, since) VALUES ('sam', ?, ?, ?)",
                weight,
            )
        db.execute("DELETE FROM cursors WHERE key=?", (LEGACY_CANARY_KEY,))


class _tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (the store's own `tx` needs the
    store; migrations run before it exists)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
