"""Admission and cancellation of chat requests: a bounded queue, deadlines, clients that leave.

`Admission` lets at most `max_queued` requests wait behind the one generating; one more is
refused at once with `Overloaded` (503 with a `Retry-After` estimated from recent request
times), and so is every request once the server is shutting down. Each admitted request gets a
`Ticket`: the reason it must stop (the client went away, its deadline passed, shutdown) is set on
the event loop and polled by the generation between tokens and between prefill chunks
(`Ticket.cancelled`, safe from the worker thread), and a request still waiting for the model is
woken at once (`Ticket.stopped`). `watch_client` polls the connection, because aiohttp does not
cancel a handler when its client disconnects. `read_body` reads at most the size limit.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from typing import Literal

from aiohttp import web

from deployment.chat_request import BodyTooLarge
from sam_brain.errors import SamBrainError

StopReason = Literal["client_gone", "deadline", "shutdown"]
WATCH_INTERVAL_S = 0.1


class Overloaded(SamBrainError):
    """The server cannot take the request now; the client may retry after `retry_after` s."""

    http_status = 503

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Ticket:
    """One admitted request: its deadline and, once set, why it must stop."""

    def __init__(self, timeout_s: float) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s if timeout_s > 0 else None
        self.reason: StopReason | None = None
        self.stopped = asyncio.Event()

    def stop(self, reason: StopReason) -> None:
        """Ask the request to stop (on the event loop); the first reason wins."""
        if self.reason is None:
            self.reason = reason
        self.stopped.set()

    def cancelled(self) -> bool:
        """True once the request must stop; polled on the worker thread between tokens."""
        if self.reason is None and self.deadline is not None and time.monotonic() > self.deadline:
            self.reason = "deadline"  # a plain store: the loop only reads it after the worker
        return self.reason is not None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (None: no deadline)."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


class Admission:
    """Bounds the requests in flight and stops them all at shutdown."""

    def __init__(self, max_queued: int = 8, timeout_s: float = 0.0) -> None:
        """Args:
        max_queued: Requests that may wait behind the one generating.
        timeout_s: Each request's deadline from admission (0: none).
        """
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.closing = False
        self.tickets: set[Ticket] = set()
        self._recent: deque[float] = deque(maxlen=32)  # seconds of recent finished requests

    def admit(self) -> Ticket:
        """A ticket for one more request.

        Raises:
            Overloaded: The server is shutting down or `max_queued` requests already wait.
        """
        if self.closing:
            raise Overloaded("the server is shutting down", self.retry_after())
        if len(self.tickets) > self.max_queued:
            raise Overloaded(
                f"too many chat requests: {len(self.tickets) - 1} are waiting"
                f" (deployment.max_queued_requests = {self.max_queued})",
                self.retry_after(),
            )
        ticket = Ticket(self.timeout_s)
        self.tickets.add(ticket)
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The request is answered (or abandoned): its slot is free."""
        if ticket in self.tickets:
            self.tickets.discard(ticket)
            self._recent.append(time.monotonic() - ticket.started)

    def retry_after(self) -> int:
        """Seconds until a slot is likely free: typical request time times the requests ahead."""
        typical = statistics.median(self._recent) if self._recent else 1.0
        return max(1, min(60, math.ceil(typical * max(1, len(self.tickets)))))

    def close(self) -> None:
        """Refuse new requests and stop every admitted one (waiting or generating)."""
        self.closing = True
        for ticket in list(self.tickets):
            ticket.stop("shutdown")


async def watch_client(request: web.Request, ticket: Ticket) -> None:
    """Stop `ticket` when the client's connection closes (run as a task; cancel when done)."""
    while not ticket.stopped.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            ticket.stop("client_gone")
            return
        await asyncio.sleep(WATCH_INTERVAL_S)


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body, refused as soon as it passes `limit` bytes (never buffered past it).

    Raises:
        BodyTooLarge: The body is larger than `limit`.
    """
    too_large = BodyTooLarge(
        f"request body is over {limit / 2**20:g} MB (deployment.max_request_mb)"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(2**16):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
