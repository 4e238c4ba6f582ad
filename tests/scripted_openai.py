"""A local OpenAI-wire chat server (aiohttp, own thread) whose answers a test scripts.

`ScriptedServer(script)` answers `POST /v1/chat/completions` with `script(body)`: a string (the
answer), or an int (an HTTP error status). Every request body is kept in `calls`, so a test can
count exactly what the teacher was asked. The server runs on its own event loop thread because
the `openai` SDK the teacher uses is synchronous.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

Script = Callable[[dict[str, Any]], "str | int"]


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted server did not start")
        return self

    def __exit__(self, *_: object) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        server: Any = site._server
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _chat(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.calls.append(body)
        answer = self.script(body)
        if isinstance(answer, int):
            err = {"error": {"message": "scripted failure", "type": "server_error"}}
            return web.json_response(err, status=answer)
        prompt = sum(len(str(m.get("content") or "")) for m in body["messages"]) // 4
        done = len(answer) // 4 + 1
        return web.json_response(
            {
                "id": f"chatcmpl-{len(self.calls)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": answer},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": done,
                    "total_tokens": prompt + done,
                },
            }
        )


def user_text(body: dict[str, Any]) -> str:
    """The last user message of a request body."""
    return next(str(m["content"]) for m in reversed(body["messages"]) if m["role"] == "user")


def system_text(body: dict[str, Any]) -> str:
    return next((str(m["content"]) for m in body["messages"] if m["role"] == "system"), "")
