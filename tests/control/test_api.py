"""The control API on a real home, served by aiohttp's test server over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sam_brain.config_load import parse_config
from sam_brain.control.app import CTX
from sam_brain.home import Home
from tests.api_auth import auth_headers


def auth(client: TestClient) -> dict[str, str]:
    return auth_headers(client.app[CTX].home.data)


def json_auth(client: TestClient) -> dict[str, str]:
    return {**auth(client), "Content-Type": "application/json"}


@pytest.fixture
def home(tmp_path: Path) -> Any:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "sessions")]},
        }
    )
    h = Home.open(cfg)
    yield h
    h.close()


async def test_self_has_the_documented_shape(client: TestClient) -> None:
    resp = await client.get("/api/self")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["success"] is True and isinstance(doc["explanation"], str)
    ts = doc["training_stats"]
    assert ts["model_version"] == "base" and ts["deployed_at"] is None
    assert set(ts["last_training"]) >= {"run_id", "samples_count", "status"}
    assert ts["training_data"]["min_for_training"] == 100
    assert ts["training_data"]["ready_to_train"] is False
    assert set(ts["deployment"]) >= {"total_versions", "rollback_available", "canary_active"}
    assert doc["status"]["backend"] == "mlx"


@pytest.mark.parametrize(
    "body,needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"force": true, "colour": "red"}', "unknown field"),
        (b'{"force": "yes"}', "true or false"),
    ],
)
async def test_bad_requests_are_400_with_a_message(
    client: TestClient, body: bytes, needle: str
) -> None:
    resp = await client.post("/api/train", data=body, headers=json_auth(client))
    assert resp.status == 400
    assert needle in (await resp.json())["error"]


async def test_train_below_threshold_says_why(client: TestClient) -> None:
    resp = await client.post("/api/train", json={}, headers=auth(client))
    assert resp.status == 409
    assert "needed" in (await resp.json())["reason"]


async def test_rollback_without_versions_is_a_conflict(client: TestClient) -> None:
    resp = await client.post("/api/rollback", json={}, headers=auth(client))
    assert resp.status == 409
    resp = await client.post("/api/rollback", json={"version": 3}, headers=auth(client))
    assert resp.status == 400


async def test_health_training_and_unknown_route(client: TestClient) -> None:
    assert (await (await client.get("/api/health")).json())["ok"] is True
    doc = await (await client.get("/api/training")).json()
    assert doc["training"] is False and doc["runs"] == []
    resp = await client.get("/api/nope")
    assert resp.status == 404 and "error" in await resp.json()
