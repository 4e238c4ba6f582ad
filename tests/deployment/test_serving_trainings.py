"""Two trainings served side by side on one resident base (tiny model): routed by model id,
canary stickiness and automatic rollback per training, a lineage switch is an adapter swap."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from deployment import canary
from deployment.canary import HealthLimits
from deployment.rollback import RollbackMonitor
from sam_brain.store import Store
from sam_brain.versions import Versions

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]


@pytest.fixture
def gh(lora_versions: Versions, lora_adapters: list[Path], tmp_path: Path) -> Versions:
    """The named training gh on the same store: gh-v1.0.0 deployed, then gh-v1.0.1 active,
    gh-v1.0.2 a canary at 50%. The default keeps v1.0.0 active."""
    store: Store = lora_versions.store.scoped("gh")
    vs = Versions(store, tmp_path / "trainings" / "gh" / "versions")
    for a in (lora_adapters[1], lora_adapters[2], lora_adapters[0]):
        vs.register(a)
    vs.activate("gh-v1.0.0")
    vs.activate("gh-v1.0.1")
    canary.start_canary(vs, "gh-v1.0.2", 50)
    return vs


async def ask(client: Any, model: str, key: str = "k") -> tuple[int, dict[str, Any], str]:
    body = {"messages": HELLO, "model": model, "max_tokens": 6, "conversation_id": key}
    resp = await client.post("/v1/chat/completions", json=body)
    return resp.status, await resp.json(), resp.headers.get("x-sam-version", "")


async def test_two_trainings_served_by_model_id_on_one_base(
    make_served: Callable[..., Awaitable[Any]], gh: Versions, lora_versions: Versions
) -> None:
    client, server, loader = await make_served(lineages={"gh": gh})
    # /v1/models: every id with the version it serves.
    resp = await client.get("/v1/models")
    models = {m["id"]: m for m in (await resp.json())["data"]}
    assert list(models) == [
        "sam-brain", "sam", "sam-gh", "v1.0.0", "gh-v1.0.1", "gh-v1.0.2", "base",
    ]  # fmt: skip
    assert models["sam"]["version"] == "v1.0.0" and models["sam"]["canary"] is None
    assert (models["sam-gh"]["training"], models["sam-gh"]["version"]) == ("gh", "gh-v1.0.1")
    assert (models["sam-gh"]["canary"], models["sam-gh"]["canary_percent"]) == ("gh-v1.0.2", 50)

    # Alternating between the lineages: each answer names its training's version, and the
    # base was loaded once; the switch is an adapter swap.
    served: dict[str, set[str]] = {}
    texts: dict[str, str] = {}
    for i in range(12):
        key = f"conversation-{i}"
        for model in ("sam", "sam-gh"):
            status, body, header = await ask(client, model, key)
            assert status == 200, body
            served.setdefault(model, set()).add(header)
            texts[header] = body["choices"][0]["message"]["content"]
            # Sticky per training: a conversation asked again gets the same version.
            assert (await ask(client, model, key))[2] == header
    assert served["sam"] == {"v1.0.0"}
    assert served["sam-gh"] == {"gh-v1.0.1", "gh-v1.0.2"}  # 50%: both seen over 12 keys
    assert loader.calls == 1
    assert server.resident is not None and server.resident.base_model == str(server.base_model)
    windows = server.metrics()
    assert windows["v1.0.0"].swaps >= 1 and windows["gh-v1.0.1"].swaps >= 1
    assert len(set(texts.values())) >= 2  # different adapters answer differently

    status, body, _ = await ask(client, "sam-nope")
    assert status == 400 and "sam-gh" in body["error"]["message"]


async def test_automatic_rollback_is_per_training(
    make_served: Callable[..., Awaitable[Any]], gh: Versions, lora_versions: Versions
) -> None:
    client, server, _ = await make_served(lineages={"gh": gh})
    canary.abort(gh, reason="by hand")  # gh's active version alone serves gh
    for i in range(3):  # gh's active version serves; the default's stays idle
        assert (await ask(client, "sam-gh", f"c{i}"))[2] == "gh-v1.0.1"
    sick = HealthLimits(max_latency_ms=0.001, min_requests=1)  # every request is too slow
    for versions in server.lineages.values():  # as the daemon's monitor does, per training
        RollbackMonitor(versions, server.metrics, sick).check()
    # gh's sick active version was rolled back to gh's previous one ...
    assert gh.current().version == "gh-v1.0.0"  # type: ignore[union-attr]
    assert gh.store.get_version("gh-v1.0.1").status == "rolled_back"
    assert gh.store.events("rollback", 1)[0]["data"]["to"] == "gh-v1.0.0"
    # ... the default, which served nothing, kept its active version.
    assert lora_versions.current().version == "v1.0.0"  # type: ignore[union-attr]
    assert (await ask(client, "sam-gh"))[2] == "gh-v1.0.0"
    assert (await ask(client, "sam"))[2] == "v1.0.0"


async def test_trainings_without_versions_are_served_by_the_base(
    tiny_model: Path, tmp_path: Path, aiohttp_client: Any
) -> None:
    from aiohttp import web

    from deployment.serving import ChatServer, add_routes

    store = Store(tmp_path / "state.db")
    default = Versions(store, tmp_path / "versions")
    gh = Versions(store.scoped("gh"), tmp_path / "trainings" / "gh" / "versions")
    server = ChatServer(default, tiny_model, default_max_tokens=4, lineages={"gh": gh})
    app = web.Application()
    add_routes(app, server)
    client = await aiohttp_client(app)
    try:
        for model in ("sam", "sam-gh", "sam-brain"):
            status, body, header = await ask(client, model)
            assert (status, header) == (200, "base"), body
        models = (await (await client.get("/v1/models")).json())["data"]
        assert [(m["id"], m["version"]) for m in models] == [
            ("sam-brain", "base"), ("sam", "base"), ("sam-gh", "base"), ("base", "base"),
        ]  # fmt: skip
    finally:
        server.close()
