"""File-system watching with watchdog, handed to the event loop thread-safely.

Watchdog calls back on its own thread; the only thing it does is `loop.call_soon_threadsafe` a
path into an asyncio queue. The daemon drains the queue, debounces bursts (a live transcript is
appended many times a second) and ingests off the loop. Directories that do not exist yet are
retried by `ensure()`, which the periodic collect job calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class _Handler(FileSystemEventHandler):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[tuple[str, Path]],
        kind: str,
        suffixes: tuple[str, ...],
        excluded: Callable[[Path], bool] | None = None,
    ) -> None:
        self.loop = loop
        self.queue = queue
        self.kind = kind
        self.suffixes = suffixes
        self.excluded = excluded

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type not in ("created", "modified", "moved", "closed"):
            return
        raw = getattr(event, "dest_path", "") or event.src_path
        path = Path(raw if isinstance(raw, str) else raw.decode())
        # `sources.exclude` by path alone: an excluded file is not even queued for reading.
        if path.suffix in self.suffixes and not (self.excluded and self.excluded(path)):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (self.kind, path))


class Watchers:
    """One observer watching several (kind, directory) pairs."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, excluded: Callable[[Path], bool] | None = None
    ) -> None:
        self.loop = loop
        self.excluded = excluded
        self.queue: asyncio.Queue[tuple[str, Path]] = asyncio.Queue()
        self.observer = Observer()
        self.wanted: list[tuple[str, Path, tuple[str, ...]]] = []
        self.watching: set[Path] = set()

    def add(self, kind: str, directory: Path, suffixes: tuple[str, ...]) -> None:
        self.wanted.append((kind, directory, suffixes))

    def ensure(self) -> list[Path]:
        """Start watching every wanted directory that exists now; returns the new ones."""
        started = []
        for kind, directory, suffixes in self.wanted:
            if directory in self.watching or not directory.is_dir():
                continue
            self.observer.schedule(
                _Handler(self.loop, self.queue, kind, suffixes, self.excluded),
                str(directory),
                recursive=True,
            )
            self.watching.add(directory)
            started.append(directory)
            log.info("watching %s for %s", directory, kind)
        return started

    def start(self) -> None:
        self.ensure()
        self.observer.start()

    def stop(self) -> None:
        self.observer.stop()
        self.observer.join(timeout=5)

    async def batches(self, debounce_s: float = 1.0) -> dict[str, set[Path]]:
        """Wait for the next event, then gather everything that arrives within `debounce_s`."""
        kind, path = await self.queue.get()
        out: dict[str, set[Path]] = {kind: {path}}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + debounce_s
        while (left := deadline - loop.time()) > 0:
            try:
                kind, path = await asyncio.wait_for(self.queue.get(), timeout=left)
            except TimeoutError:
                break
            out.setdefault(kind, set()).add(path)
        return out
