"""A home moved to another folder keeps serving its versions (paths are stored relative)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from aiohttp import web

from deployment.serving import ChatServer, add_routes
from sam_brain.store import Store
from sam_brain.versions import Versions

HELLO = [{"role": "user", "content": "Say hello."}]


async def answer(versions: Versions, tiny_model: Path, aiohttp_client: Any) -> tuple[int, Any]:
    server = ChatServer(versions, tiny_model, default_max_tokens=6)
    try:
        app = web.Application()
        add_routes(app, server)
        client = await aiohttp_client(app)
        resp = await client.post("/v1/chat/completions", json={"messages": HELLO})
        return resp.status, await resp.json()
    finally:
        server.close()


async def test_moved_home_serves_the_same_answers(
    tmp_path: Path, lora_adapters: list[Path], tiny_model: Path, aiohttp_client: Any
) -> None:
    old = tmp_path / "old-home"
    versions = Versions(Store(old / "state.db"), old / "versions")
    for adapter in lora_adapters[:2]:
        versions.register(adapter)
    versions.activate("v1.0.1")
    status, before = await answer(versions, tiny_model, aiohttp_client)
    assert status == 200 and before["sam_version"] == "v1.0.1"
    versions.store.close()

    new = tmp_path / "moved" / "home"
    new.parent.mkdir()
    shutil.move(str(old), str(new))
    moved = Versions(Store(new / "state.db"), new / "versions")
    assert moved.current().adapter_path == str(new / "versions" / "v1.0.1")  # type: ignore[union-attr]
    status, after = await answer(moved, tiny_model, aiohttp_client)
    assert status == 200, after
    assert after["sam_version"] == "v1.0.1"
    assert after["choices"][0]["message"] == before["choices"][0]["message"]  # same adapter
    moved.store.close()
