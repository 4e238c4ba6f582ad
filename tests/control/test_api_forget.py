"""`POST /api/data/forget` over real HTTP (aiohttp's test server on loopback), real pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.protocols import Sample
from tests.api_auth import auth_headers


@pytest.fixture
def home(tmp_path: Path) -> Any:
    h = Home.open(parse_config({"data_dir": str(tmp_path / "data")}))
    rows = [
        Sample(
            id=f"s{i}",
            source="distill",
            source_key=f"distill:r{i}",
            group=f"g{i}",
            messages=[
                {
                    "role": "user",
                    "content": f"Question {i} about the {'merger' if i < 2 else 'build'}",
                },
                {"role": "assistant", "content": f"Answer {i}, long enough to be a real sample."},
            ],
        )
        for i in range(5)
    ]
    h.pool.upsert([(s, "train") for s in rows])
    yield h
    h.close()


async def test_forget_over_http(client: TestClient, home: Home) -> None:
    headers = auth_headers(home.data)
    resp = await client.post("/api/data/forget", json={"match": "merger", "confirm": True})
    assert resp.status == 401 and home.pool.count() == 5  # a mutation: the token is required
    for body in ({}, {"match": 7}, {"source": "mail"}, {"match": "merger"}, {"before": "soon"}):
        resp = await client.post("/api/data/forget", json=body, headers=headers)
        assert resp.status == 400 and (await resp.json())["error"]
    assert home.pool.count() == 5  # refused requests changed nothing
    resp = await client.post(
        "/api/data/forget", json={"match": "MERGER", "dry_run": True}, headers=headers
    )
    assert resp.status == 200 and (await resp.json())["samples"] == 2 and home.pool.count() == 5
    resp = await client.post(
        "/api/data/forget", json={"match": "merger", "confirm": True}, headers=headers
    )
    doc = await resp.json()
    assert resp.status == 200 and doc["pool_deleted"] == 2 and "merger" not in str(doc)
    assert {s.id for s, _ in home.pool.samples()} == {"s2", "s3", "s4"}
