"""The cost ledger and the daily budget: every teacher call, its tokens and its price, in state.db.

The ledger keeps its own table (`teacher_calls`, created here) and its own connection, so the
state store's schema stays untouched. Days are UTC days. `Budgeted` wraps a `Teacher`: before a
call it refuses when the day's spend (plus what calls in flight may still cost) reaches
`teacher.max_usd_per_day`; after a call it records the row, so the next call sees it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sam_brain.config import TeacherConfig
from sam_brain.errors import BudgetExhausted
from sam_brain.protocols import Teacher, TeacherReply, TeacherRequest

# Anthropic's Message Batches bill half the price of the same request sent one at a time.
BATCH_DISCOUNT = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS teacher_calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts TEXT NOT NULL,
    day TEXT NOT NULL,
    job TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    request_key TEXT NOT NULL DEFAULT '',
    batch INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cache_read_tokens INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS teacher_calls_day ON teacher_calls(day);
CREATE INDEX IF NOT EXISTS teacher_calls_job ON teacher_calls(job)
"""

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def cost_usd(config: TeacherConfig, reply: TeacherReply, *, batch: bool = False) -> float:
    """What a reply cost at the configured prices per million tokens."""
    usd = (
        reply.input_tokens * config.usd_per_mtok_input
        + reply.output_tokens * config.usd_per_mtok_output
        + reply.cache_read_tokens * config.usd_per_mtok_cache_read
        + reply.cache_write_tokens * config.usd_per_mtok_cache_write
    ) / 1_000_000
    return usd * BATCH_DISCOUNT if batch else usd


def worst_case_usd(config: TeacherConfig, request: TeacherRequest, *, batch: bool = False) -> float:
    """An upper bound on a request's cost before it is sent (about 3 characters a token,
    the whole answer length, no cache discount): what a call in flight may still add."""
    chars = len(request.system) + sum(len(str(m.get("content") or "")) for m in request.messages)
    out = request.max_tokens or config.max_output_tokens
    usd = (chars / 3 * config.usd_per_mtok_input + out * config.usd_per_mtok_output) / 1_000_000
    return usd * BATCH_DISCOUNT if batch else usd


@dataclass
class Spend:
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    usd: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Ledger:
    """The `teacher_calls` table of one home's state.db; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    self._db.execute(stmt)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def record(
        self,
        *,
        job: str,
        provider: str,
        reply: TeacherReply,
        usd: float,
        when: datetime,
        batch: bool = False,
    ) -> None:
        row = (
            when.isoformat(timespec="seconds"),
            when.date().isoformat(),
            job,
            provider,
            reply.model,
            reply.key,
            int(batch),
            reply.input_tokens,
            reply.output_tokens,
            reply.cache_read_tokens,
            reply.cache_write_tokens,
            usd,
        )
        with self._lock:
            self._db.execute(
                "INSERT INTO teacher_calls(ts, day, job, provider, model, request_key, batch,"
                " input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, usd)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )

    def spent(self, day: str) -> float:
        """USD spent on `day` (YYYY-MM-DD, UTC) by every job."""
        with self._lock:
            row = self._db.execute(
                "SELECT COALESCE(SUM(usd), 0) FROM teacher_calls WHERE day=?", (day,)
            ).fetchone()
        return float(row[0])

    def totals(self, by: str, where: str = "", args: tuple[Any, ...] = ()) -> dict[str, Spend]:
        """Calls, tokens and USD grouped by `day` or `job` (newest day first)."""
        if by not in ("day", "job"):
            raise ValueError(by)
        sql = (
            f"SELECT {by}, COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),"
            f" SUM(cache_write_tokens), SUM(usd) FROM teacher_calls {where}"
            f" GROUP BY {by} ORDER BY {by} {'DESC' if by == 'day' else 'ASC'}"
        )
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return {
            str(r[0]): Spend(int(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]), float(r[6]))
            for r in rows
        }

    def calls(self, job: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM teacher_calls" + (" WHERE job=?" if job else "") + " ORDER BY id"
        with self._lock:
            cur = self._db.execute(sql, (job,) if job else ())
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def stats(ledger: Ledger, config: TeacherConfig, clock: Clock = utc_now) -> dict[str, Any]:
    """What `samctl teach stats` and `GET /api/teach/stats` show."""
    today = clock().date().isoformat()
    spent = ledger.spent(today)
    return {
        "today": today,
        "spent_today_usd": spent,
        "max_usd_per_day": config.max_usd_per_day,
        "left_today_usd": max(0.0, config.max_usd_per_day - spent),
        "by_day": {k: v.to_dict() for k, v in ledger.totals("day").items()},
        "by_job": {k: v.to_dict() for k, v in ledger.totals("job").items()},
    }


class Budget:
    """The daily cap, shared by every call of one process: spent + reserved (in flight)."""

    def __init__(self, ledger: Ledger, config: TeacherConfig, clock: Clock = utc_now) -> None:
        self.ledger = ledger
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._reserved = 0.0

    def reserve(self, usd: float) -> None:
        """Claim `usd` for a call about to be sent.

        Raises:
            BudgetExhausted: The day's spend plus calls in flight has reached the cap.
        """
        day = self.clock().date().isoformat()
        cap = self.config.max_usd_per_day
        with self._lock:
            spent = self.ledger.spent(day)
            if spent + self._reserved >= cap:
                raise BudgetExhausted(
                    f"teacher budget spent: ${spent:.4f} of ${cap:.2f} on {day} (UTC);"
                    " the job resumes tomorrow or after teacher.max_usd_per_day is raised"
                )
            self._reserved += usd

    def release(self, usd: float) -> None:
        with self._lock:
            self._reserved = max(0.0, self._reserved - usd)


class Budgeted:
    """A `Teacher` whose every call is checked against the budget and written to the ledger."""

    def __init__(self, teacher: Teacher, budget: Budget, job: str) -> None:
        self.inner = teacher
        self.budget = budget
        self.job = job
        self.name: str = teacher.name
        self.model: str = teacher.model

    def ask(self, request: TeacherRequest) -> TeacherReply:
        config = self.budget.config
        claim = worst_case_usd(config, request)
        self.budget.reserve(claim)
        try:
            reply = self.inner.ask(request)
            reply.key = reply.key or request.key
            self.record(reply)
        finally:
            self.budget.release(claim)
        return reply

    def record(self, reply: TeacherReply, *, batch: bool = False) -> float:
        usd = cost_usd(self.budget.config, reply, batch=batch)
        self.budget.ledger.record(
            job=self.job,
            provider=self.name,
            reply=reply,
            usd=usd,
            when=self.budget.clock(),
            batch=batch,
        )
        return usd
