"""The machine's training queue: trainings waiting for the one training slot, first come first.

Every named training decides on its own when it wants a run (its threshold, window, daily cap,
retries: `Lineage`); the machine trains one at a time. A training that wants a run while another
trains waits here (at most once) and starts when the slot frees; `/api/training` shows the queue.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sam_brain.store import now_iso


@dataclass
class Lineage:
    """One training's scheduling state: its pending retry."""

    retry_at: datetime | None = None
    attempt: int = 1


@dataclass(frozen=True)
class Waiting:
    """A training waiting for the slot, and why it asked."""

    training: str
    trigger: str  # threshold, retry, forced, api
    since: str = field(default_factory=now_iso)


class RunQueue:
    """FIFO of trainings waiting for the slot; a training waits at most once."""

    def __init__(self) -> None:
        self._items: list[Waiting] = []

    def add(self, training: str, trigger: str) -> int:
        """Queue `training` (or keep its place, a user's request upgrading its trigger);
        returns its 1-based position."""
        for i, w in enumerate(self._items):
            if w.training == training:
                if trigger in ("forced", "api") and w.trigger not in ("forced", "api"):
                    self._items[i] = Waiting(training, trigger, w.since)
                return i + 1
        self._items.append(Waiting(training, trigger))
        return len(self._items)

    def peek(self) -> Waiting | None:
        return self._items[0] if self._items else None

    def pop(self) -> Waiting | None:
        return self._items.pop(0) if self._items else None

    def remove(self, training: str) -> bool:
        before = len(self._items)
        self._items = [w for w in self._items if w.training != training]
        return len(self._items) != before

    def position(self, training: str) -> int | None:
        for i, w in enumerate(self._items):
            if w.training == training:
                return i + 1
        return None

    def clear(self) -> None:
        self._items.clear()

    def to_list(self) -> list[dict[str, Any]]:
        return [asdict(w) for w in self._items]

    def __len__(self) -> int:
        return len(self._items)
