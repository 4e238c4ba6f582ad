"""A local OpenAI-wire chat server (aiohttp, own thread) whose answers a test scripts.

`ScriptedServer(script)` answers `POST /v1/chat/completions` with `script(body)`: a string (the
answer), or an int (an HTTP error status). Every request body is kept in `calls`, so a test can
count exactly what the teacher was asked. It runs on its own event loop thread
(`sam_brain.dev.teacher_wire.serve_app`) because the `openai` SDK the teacher uses is synchronous.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from sam_brain.dev.teacher_wire import serve_app

Script = Callable[[dict[str, Any]], "str | int"]


class ScriptedServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.calls: list[dict[str, Any]] = []
        self.url = ""
        self._serving: Any = None

    def __enter__(self) -> ScriptedServer:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._serving = serve_app(app)
        self.url = self._serving.__enter__() + "/v1"
        return self

    def __exit__(self, *exc: object) -> None:
        self._serving.__exit__(None, None, None)

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
