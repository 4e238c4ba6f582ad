"""Shadow mode: replay requests the stable version answered on the canary, off the client's path.

With `deployment.shadow` on and a canary running, `ChatServer` offers every routed request the
stable version answered to a `ShadowMirror` once the answer has been written to the client in full
(`answer_then_mirror`). The
mirror keeps a bounded queue (a full queue drops the copy and counts it: the one resident model
serves one generation at a time, so copies must never pile up) and replays the copies one by one
through a callback that runs the canary and records the result in its metrics only, marked
shadow. Each replay ends as `mirrored` (recorded, an error included), `preempted` (a client
request needed the model: the copy stopped and was not recorded) or `skipped` (the canary had
changed meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from deployment.chat_request import ChatRequest

log = logging.getLogger(__name__)

Outcome = Literal["mirrored", "preempted", "skipped"]
Replay = Callable[[str, ChatRequest], Awaitable[Outcome]]


class ShadowMirror:
    """A bounded queue of answered requests to replay on a canary, and its counters."""

    def __init__(self, replay: Replay, capacity: int = 8) -> None:
        """Args:
        replay: Runs one copy on the named canary version and says how it ended.
        capacity: Copies waiting at most; more are dropped (and counted).
        """
        self.capacity = max(1, capacity)  # asyncio.Queue(0) would be unbounded
        self.counts: dict[str, int] = {"mirrored": 0, "dropped": 0, "preempted": 0, "skipped": 0}
        self._replay = replay
        self._queue: asyncio.Queue[tuple[str, ChatRequest]] | None = None
        self._task: asyncio.Task[None] | None = None

    def offer(self, version: str, request: ChatRequest) -> bool:
        """Queue a copy of `request` for canary `version` (call on the event loop).

        Returns:
            False when the queue was full and the copy was dropped.
        """
        if self._queue is None:
            self._queue = asyncio.Queue(self.capacity)
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait((version, request))
        except asyncio.QueueFull:
            self.counts["dropped"] += 1
            return False
        return True

    def stats(self) -> dict[str, int]:
        """The counters, `queued` (copies waiting now) and `capacity`."""
        queued = self._queue.qsize() if self._queue is not None else 0
        return {**self.counts, "queued": queued, "capacity": self.capacity}

    async def drain(self) -> None:
        """Wait until every queued copy has been replayed."""
        if self._queue is not None:
            await self._queue.join()

    def close(self) -> None:
        """Stop replaying (queued copies are forgotten)."""
        if self._task is not None:
            self._task.cancel()

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            version, request = await self._queue.get()
            try:
                self.counts[await self._replay(version, request)] += 1
            except asyncio.CancelledError:
                raise
            except Exception:  # recorded as the canary's error; the mirror keeps going
                log.warning("shadow request on %s failed", version, exc_info=True)
                self.counts["mirrored"] += 1
            finally:
                self._queue.task_done()


async def answer_then_mirror(
    request: web.Request,
    response: web.StreamResponse,
    mirror: ShadowMirror | None,
    canary: str | None,
    chat: ChatRequest,
) -> web.StreamResponse:
    """Send `response` in full, then queue the replay of `chat` on `canary` (None: no replay)."""
    if mirror is not None and canary is not None:
        await response.prepare(request)
        await response.write_eof()  # the client has the whole answer before the copy is queued
        mirror.offer(canary, chat)
    return response
