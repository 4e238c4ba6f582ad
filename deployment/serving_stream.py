"""Server-sent events for `/v1/chat/completions` with `"stream": true`.

A role chunk, one chunk per text segment as the worker thread decodes it, a finish chunk, then
`data: [DONE]`. A generation stopped by its deadline or a shutdown ends with an error event
instead of a finish chunk, so the client knows the answer is cut; a client that leaves stops the
generation (its `Ticket`) and the model is held until the worker is idle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from deployment.chat_guard import Ticket
from deployment.resident import Completion

log = logging.getLogger(__name__)

STOPPED_BY = {
    "deadline": ("timeout", "the request's deadline passed (deployment.request_timeout_seconds)"),
    "shutdown": ("server_shutting_down", "the server is shutting down"),
}


async def stream_completion(
    request: web.Request,
    name: str,
    run: Callable[[Callable[[str], None]], Awaitable[Completion]],
    ticket: Ticket,
    completion_id: str = "",
    on_done: Callable[[Completion], Awaitable[None]] | None = None,
) -> web.StreamResponse:
    """Answer `request` as SSE; `run(push)` generates, calling `push` with each text segment.

    `on_done(completion)` runs after the finish chunk of a completed answer and before `[DONE]`
    (the conversation log, so a client that saw `[DONE]` can already give feedback on it).
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    chunk_id, created = completion_id or f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        doc = {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(doc)}\n\n".encode()

    def event(message: str, kind: str) -> bytes:
        return f"data: {json.dumps({'error': {'message': message, 'type': kind}})}\n\n".encode()

    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "x-sam-version": name,
        }
    )
    await response.prepare(request)

    def push(text: str) -> None:  # called on the worker thread
        loop.call_soon_threadsafe(queue.put_nowait, text)

    task = asyncio.ensure_future(run(push))
    try:
        await response.write(chunk({"role": "assistant"}))
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                await response.write(chunk({"content": getter.result()}))
                continue
            getter.cancel()
            while not queue.empty():  # segments queued before the worker finished
                await response.write(chunk({"content": queue.get_nowait()}))
            break
        try:
            completion = task.result()
            stopped = STOPPED_BY.get(ticket.reason or "")
            if completion.finish_reason == "cancelled" and stopped is not None:
                await response.write(event(stopped[1], stopped[0]))
            else:
                await response.write(chunk({}, completion.finish_reason))
                if on_done is not None:
                    await on_done(completion)
        except Exception as err:
            log.exception("streamed chat completion failed")
            await response.write(event(f"generation failed: {err}", "server_error"))
        await response.write(b"data: [DONE]\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        ticket.stop("client_gone")  # stop generating, keep the model until the worker is idle
        await asyncio.gather(task, return_exceptions=True)
        raise
    return response
