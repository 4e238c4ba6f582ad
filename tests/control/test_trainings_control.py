"""Named trainings through the control API and samctl: per-training lists, rollbacks, status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sam_brain.config_load import parse_config
from sam_brain.control.app import CTX
from sam_brain.control.cli import main
from sam_brain.home import Home
from tests.api_auth import auth_headers


def adapter(path: Path, payload: bytes) -> Path:
    path.mkdir(parents=True)
    (path / "adapters.safetensors").write_bytes(payload)
    (path / "adapter_config.json").write_text("{}")
    return path


def two_lineages(home: Home, tmp_path: Path) -> None:
    """sam: v1.0.0 active; gh: gh-v1.0.0 then gh-v1.0.1 active."""
    home.versions.activate(home.versions.register(adapter(tmp_path / "s0", b"s0")).version)
    gh = home.for_training("gh")
    for i in range(2):
        gh.versions.activate(gh.versions.register(adapter(tmp_path / f"g{i}", b"g%d" % i)).version)


@pytest.fixture
def home(tmp_path: Path) -> Any:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "sessions")]},
            "trainings": {"gh": {"schemas": ["gh"], "min_for_training": 3}},
        }
    )
    h = Home.open(cfg)
    two_lineages(h, tmp_path)
    yield h
    h.close()


async def test_api_lists_each_training_and_rolls_back_one(client: TestClient[Any, Any]) -> None:
    headers = {**auth_headers(client.app[CTX].home.data), "Content-Type": "application/json"}
    doc = await (await client.get("/api/self")).json()
    assert doc["training_stats"]["model_version"] == "v1.0.0"  # the default's, as before
    lines = {t["name"]: t for t in doc["trainings"]}
    assert list(lines) == ["sam", "gh"]
    assert (lines["gh"]["model"], lines["gh"]["model_version"]) == ("sam-gh", "gh-v1.0.1")
    assert (lines["gh"]["versions"], lines["gh"]["min_for_training"]) == (2, 3)
    training = await (await client.get("/api/training")).json()
    assert training["queue"] == [] and training["running"] is None
    assert [t["name"] for t in training["trainings"]] == ["sam", "gh"]
    assert "0 new samples, 3 needed" in training["trainings"][1]["blocked_by"]
    versions = await (await client.get("/api/versions?training=gh")).json()
    assert [v["version"] for v in versions["versions"]] == ["gh-v1.0.0", "gh-v1.0.1"]
    # A canary in gh, by the API: visible with ?training=gh only, promoted in gh only.
    body = {"version": "gh-v1.0.0", "training": "gh", "traffic": 10}
    resp = await client.post("/api/canary", json=body, headers=headers)
    assert resp.status == 200, await resp.text()
    doc = await (await client.get("/api/canary?training=gh")).json()
    assert (doc["version"], doc["percent"]) == ("gh-v1.0.0", 10)
    assert (await (await client.get("/api/canary")).json())["active"] is False
    resp = await client.post("/api/promote", json={"training": "gh"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["version"]["version"] == "gh-v1.0.0"
    resp = await client.post("/api/rollback", json={"training": "gh"}, headers=headers)
    assert resp.status == 200 and (await resp.json())["version"]["version"] == "gh-v1.0.1"
    doc = await (await client.get("/api/versions/current")).json()
    assert doc["version"]["version"] == "v1.0.0"  # the default did not move
    resp = await client.post("/api/train", json={"training": "nope"}, headers=headers)
    assert resp.status == 404 and "configured: sam, gh" in (await resp.json())["error"]
    resp = await client.post("/api/train", json={"training": "gh"}, headers=headers)
    assert resp.status == 409 and "3 needed" in (await resp.json())["reason"]


def test_samctl_list_and_rollback_by_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "home"
    data.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(data))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    (data / "config.toml").write_text('[api]\nport = 9\n[trainings.gh]\nschemas = ["gh"]\n')
    from sam_brain.config_load import load_config

    h = Home.open(load_config())
    two_lineages(h, tmp_path)
    h.close()

    def run(*args: str) -> tuple[int, str]:
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out + out.err

    code, out = run("list", "--training", "gh")
    names = [line[2:].split()[0] for line in out.splitlines()]
    assert code == 0 and names == ["gh-v1.0.0", "gh-v1.0.1"] and "* gh-v1.0.1" in out
    assert run("current", "--training", "gh")[1].strip() == "gh-v1.0.1"
    code, out = run("rollback", "--training", "gh")
    assert code == 0 and "active version: gh-v1.0.0" in out
    assert run("current")[1].strip() == "v1.0.0"  # the default's lineage did not move
    code, out = run("rollback", "gh-v1.0.1")  # another training's version: not found here
    assert code == 3 and "belongs to training 'gh'" in out
    # A canary in gh, promoted, by hand: the default's lineage never sees it.
    h = Home.open(load_config())
    h.for_training("gh").versions.register(adapter(tmp_path / "g2", b"g2"))
    h.close()
    code, out = run("canary", "gh-v1.0.2", "--training", "gh", "--traffic", "10", "--json")
    assert code == 0 and '"canary": "gh-v1.0.2"' in out
    assert run("canary", "gh-v1.0.2", "--traffic", "10")[0] == 3  # not the default's version
    code, out = run("promote", "--training", "gh", "--json")
    assert code == 0 and '"promoted": "gh-v1.0.2"' in out
    assert run("promote")[0] == 4  # no canary in the default training
    assert run("current", "--training", "gh")[1].strip() == "gh-v1.0.2"
    assert run("current")[1].strip() == "v1.0.0"
    code, out = run("status")
    assert code == 0 and "training gh (sam-gh): gh-v1.0.2; 0 new / 100 needed" in out
    code, out = run("list", "--training", "nope")
    assert code == 3 and "no training 'nope'" in out
