"""Two named trainings on the tiny model: one run at a time, each on its own samples and lineage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import parse_config
from sam_brain.control.api import make_app
from sam_brain.control.app import AppContext
from sam_brain.home import Home
from sam_brain.pool import file_lock
from sam_brain.protocols import Sample, stable_id
from sam_brain.train.queue import RunQueue
from sam_brain.train.scheduler import Coordinator
from tests.api_auth import auth_headers

FAST = {
    "lora_rank": 2, "lora_keys": ["self_attn.q_proj"], "batch_size": 1, "grad_accum": 1,
    "max_seq_length": 64, "epochs": 1.0, "max_steps": 3, "eval_every": 10_000,
    "save_every": 10_000,
}  # fmt: skip


def fill(home: Home, source: str, n: int, **meta: str) -> None:
    rows = []
    for i in range(n):
        g = f"{source}-{meta.get('schema', '')}-g{i % 4}"
        s = Sample(
            id=stable_id(source, g, str(i)),
            source=source,
            source_key=g,
            group=g,
            messages=[
                {"role": "user", "content": f"{source} {meta} question {i}"},
                {"role": "assistant", "content": f"{source} answer number {i}"},
            ],
            meta=dict(meta),
        )
        rows.append((s, "train"))
    with file_lock(home.pool.lock_path):
        home.pool.upsert(rows)


def test_the_queue_keeps_one_place_per_training() -> None:
    q = RunQueue()
    assert (q.add("gh", "threshold"), q.add("acme", "threshold"), q.add("gh", "forced")) == (
        1,
        2,
        1,
    )
    assert [w["training"] for w in q.to_list()] == ["gh", "acme"]
    assert q.to_list()[0]["trigger"] == "forced"  # a user's request upgrades the waiting one
    assert q.remove("gh") and not q.remove("gh")
    assert q.pop().training == "acme" and q.pop() is None  # type: ignore[union-attr]


@pytest.mark.slow
async def test_two_trainings_queue_and_train_on_their_own_samples(
    tmp_path: Path, tiny_model: Path
) -> None:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "s")]},
            # The default waits for many samples: only the two named trainings are due.
            "training": {"mlx_base_model": str(tiny_model), "min_for_training": 1000},
            "profiles": {"fast": FAST},
            "trainings": {
                "gh": {"schemas": ["gh"], "profile": "fast", "min_for_training": 8},
                "docker": {"schemas": ["docker"], "profile": "fast", "min_for_training": 8},
            },
        }
    )
    home = Home.open(cfg)
    fill(home, "teacher", 12, schema="gh")
    fill(home, "teacher", 10, schema="docker")
    fill(home, "sessions", 6)
    coord = Coordinator(home, "mlx")
    await coord.check()
    first = coord.running
    assert first in ("gh", "docker")
    second = "docker" if first == "gh" else "gh"
    assert [w["training"] for w in coord.queue.to_list()] == [second]
    assert "one run at a time" in (coord.why_not(training=second) or "")
    seen: list[str | None] = []
    for _ in range(3000):  # until both have run; the slot is never held by two
        seen.append(coord.running)
        if coord.running is None and not len(coord.queue):
            break
        await asyncio.sleep(0.1)
    order = [name for i, name in enumerate(seen) if name and (i == 0 or seen[i - 1] != name)]
    assert order == [first, second]
    trained = {name: home.for_training(name) for name in ("gh", "docker")}
    for name, th in trained.items():
        runs = th.store.runs()
        assert len(runs) == 1 and runs[0].status == "completed", runs[0].reason
        assert runs[0].training == name
        data = th.runs_dir / runs[0].run_id / "data"
        rows = [
            json.loads(line)
            for f in ("train.jsonl", "valid.jsonl", "test.jsonl")
            for line in (data / f).read_text().splitlines()
        ]
        assert len(rows) == (12 if name == "gh" else 10)
        assert all(f"'schema': '{name}'" in r["messages"][0]["content"] for r in rows)
        versions = th.store.versions()
        assert [v.version for v in versions] == [f"{name}-v1.0.0"]
    assert home.store.versions() == [] and home.store.runs() == []  # the default never ran
    await coord.stop()
    home.close()


@pytest.mark.slow
async def test_the_queue_is_visible_and_a_queued_training_can_leave_it(
    tmp_path: Path, tiny_model: Path, aiohttp_client: Any
) -> None:
    slow = {**FAST, "max_steps": 0, "epochs": 500.0}  # trains until cancelled
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "s")]},
            "training": {"mlx_base_model": str(tiny_model), "min_for_training": 1000},
            "profiles": {"slow": slow},
            "trainings": {"gh": {"schemas": ["gh"], "profile": "slow"}},
        }
    )
    home = Home.open(cfg)
    fill(home, "teacher", 8, schema="gh")
    fill(home, "sessions", 8)
    coord = Coordinator(home, "mlx")
    ctx = AppContext(home=home, coordinator=coord, backend="mlx", backend_why="test")
    client = await aiohttp_client(make_app(ctx))
    headers = auth_headers(home.data)

    async def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        resp = await client.post(path, json=body, headers=headers)
        return resp.status, await resp.json()

    status, doc = await post("/api/train", {"training": "gh", "force": True})
    assert status == 202 and doc["started"] and doc["training"] == "gh"
    status, doc = await post("/api/train", {"training": "sam"})  # not due: refused, not queued
    assert status == 409 and "1000 needed" in doc["reason"]
    status, doc = await post("/api/train", {"training": "sam", "force": True})
    assert (status, doc["started"], doc["queued"]) == (202, False, 1)
    training = await (await client.get("/api/training")).json()
    assert training["running"] == "gh" and training["current"]["training"] == "gh"
    assert [(w["training"], w["trigger"]) for w in training["queue"]] == [("sam", "forced")]
    assert "queued at position 1" in training["trainings"][0]["blocked_by"]
    gh_doc = await (await client.get("/api/training?training=gh")).json()
    assert [r["training"] for r in gh_doc["runs"]] == ["gh"] and training["runs"] == []
    assert (await post("/api/train/cancel", {"training": "sam"}))[1]["cancelled"]
    assert (await (await client.get("/api/training")).json())["queue"] == []
    gh_store = home.for_training("gh").store
    for _ in range(600):  # the worker is up once it reports progress: then a cancel stops it
        if gh_store.runs()[0].progress.get("step"):
            break
        await asyncio.sleep(0.1)
    assert (await post("/api/train/cancel", {"training": "gh"}))[1]["cancelled"]
    assert coord.task is not None
    await asyncio.wait_for(coord.task, 120)
    await asyncio.sleep(0.2)
    assert not coord.training and home.store.runs() == []  # the default never started
    assert home.for_training("gh").store.runs()[0].status == "cancelled"
    await coord.stop()
    home.close()
