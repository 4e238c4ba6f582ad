"""`POST /api/data/import` over real HTTP (aiohttp's test server on loopback), real pool."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from tests.api_auth import auth_headers

ROWS = [
    {"instruction": "Name a prime number.", "output": "Seven is a prime number."},
    {"instruction": "Spell cat backwards.", "input": "", "output": "It is spelled tac."},
]


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    h = Home.open(parse_config({"data_dir": str(tmp_path / "data")}))
    yield h
    h.close()


async def test_import_over_http(client: TestClient, home: Home, tmp_path: Path) -> None:
    headers = auth_headers(home.data)
    inside = home.data / "incoming" / "alpaca.jsonl"
    inside.parent.mkdir()
    inside.write_text("".join(json.dumps(r) + "\n" for r in ROWS), "utf-8")
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text(inside.read_text())
    (home.data / "incoming" / "link.jsonl").symlink_to(outside)
    resp = await client.post("/api/data/import", json={"path": str(inside)})
    assert resp.status == 401  # a mutation: the token is required
    for path in (outside, home.data / "incoming" / "link.jsonl", "incoming/alpaca.jsonl", home.data / "nope.jsonl"):  # fmt: skip
        resp = await client.post("/api/data/import", json={"path": str(path)}, headers=headers)
        doc = await resp.json()
        assert resp.status == 400 and "inside the home" in doc["error"], doc
    resp = await client.post(
        "/api/data/import", json={"path": str(inside), "training": "other"}, headers=headers
    )
    assert resp.status == 404 and "no training 'other'" in (await resp.json())["error"]
    assert home.pool.count() == 0
    resp = await client.post("/api/data/import", json={"path": str(inside)}, headers=headers)
    doc = await resp.json()
    assert resp.status == 200 and (doc["format"], doc["inserted"]) == ("alpaca", 2)
    assert home.pool.stats()["by_source"] == {"dataset": 2}

    bad = home.data / "incoming" / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"instruction": "x"}) + "\n")
    resp = await client.post("/api/data/import", json={"path": str(bad)}, headers=headers)
    doc = await resp.json()
    assert resp.status == 400 and "line 2: no 'output' field" in doc["error"]
    assert home.pool.count() == 2
