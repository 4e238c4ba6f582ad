"""A teach job's append-only progress file and its status document.

`progress.jsonl` lines (each fsynced before the work it records is trusted):
  {"t": "reply", "key": K, "reply": {...}}       a paid answer, written as soon as it arrives
  {"t": "done", "keys": [...], "counts": {...}}  those keys' samples are in the pool
  {"t": "batch", "id": B, "keys": [...]}         a Message Batch was submitted for these keys
  {"t": "batch_done", "id": B}                   its results are all read
A rerun replays answered keys from the file instead of asking again, and never re-counts done
ones. A torn last line (a crash mid-write) is ignored.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sam_brain.fsutil import write_text_atomic
from sam_brain.protocols import TeacherReply

STATES = ("running", "done", "budget", "cancelled", "failed")


class ProgressLog:
    """The replies, done keys, counts and batches recorded so far; append-only, thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.replies: dict[str, TeacherReply] = {}
        self.done: set[str] = set()
        self.counts: Counter[str] = Counter()
        self.batches: dict[str, list[str]] = {}  # submitted, results not all read yet
        self._lock = threading.Lock()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    self._apply(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn line from a crash mid-write
        path.parent.mkdir(parents=True, exist_ok=True)

    def _apply(self, rec: dict[str, Any]) -> None:
        kind = rec["t"]
        if kind == "reply":
            self.replies[rec["key"]] = TeacherReply(**rec["reply"])
        elif kind == "done":
            self.done.update(rec["keys"])
            self.counts.update(rec["counts"])
        elif kind == "batch":
            self.batches[rec["id"]] = list(rec["keys"])
        elif kind == "batch_done":
            self.batches.pop(rec["id"], None)

    def append(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self._apply(rec)

    def add_reply(self, key: str, reply: TeacherReply) -> None:
        self.append({"t": "reply", "key": key, "reply": asdict(reply)})


@dataclass
class JobStatus:
    """Where a job is; `status.json` next to its progress file, and `GET /api/teach`."""

    job_id: str
    kind: str
    spec: dict[str, Any]
    state: str = "running"
    total: int = 0
    done: int = 0
    stored: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    usd: float = 0.0  # spent by this job, all days (from the ledger)
    message: str = ""
    error: str = ""
    started: float = field(default_factory=time.time)
    finished: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, folder: Path) -> None:
        write_text_atomic(folder / "status.json", json.dumps(self.to_dict(), indent=1))


def jobs_dir(data: Path) -> Path:
    return data / "teach"


def recent_jobs(data: Path, limit: int = 10) -> list[dict[str, Any]]:
    """The last jobs' status documents, newest first (unreadable ones are skipped)."""
    docs = []
    for path in jobs_dir(data).glob("*/status.json"):
        try:
            docs.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    docs.sort(key=lambda d: float(d.get("started", 0)), reverse=True)
    return docs[:limit]
