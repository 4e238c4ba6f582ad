"""A browser-shaped attack suite against the control API, over real loopback HTTP.

Each attack is sent as raw HTTP bytes (so Host, Origin and Content-Type are exactly what a
browser or a rebinding page would send) to the daemon's app on a real home, and must be refused
with nothing changed: pool count, versions (rows and folders), canary, runs and events. A
positive control shows the same requests pass when sent the way samctl sends them.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deployment import canary
from sam_brain.config_load import parse_config
from sam_brain.control.api import make_app
from sam_brain.control.apitoken import read_token, token_path
from sam_brain.control.app import AppContext
from sam_brain.control.cli_client import Client
from sam_brain.control.daemon import Daemon
from sam_brain.home import Home
from sam_brain.pipeline.ingest import make_collectors
from sam_brain.train.scheduler import Coordinator
from tests.adapter_files import write_adapter
from tests.api_auth import auth_headers

RECORD = {"kind": "reasoning", "prompt": "Why is the sky blue?", "answer": "Rayleigh scattering."}
MUTATING = [
    ("/api/distill", {"records": [RECORD]}),
    ("/api/data/import", {"path": "/tmp/rows.jsonl"}),
    ("/api/train", {"force": True}),
    ("/api/train/cancel", {}),
    ("/api/rollback", {}),
    ("/api/deploy", {"path": "/tmp"}),
    ("/api/canary", {"version": "v1.0.1", "traffic": 100}),
    ("/api/promote", {}),
    ("/v1/feedback", {"completion_id": "chatcmpl-0", "kind": "up"}),
]


def make_home(tmp_path: Path, **api: Any) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "sessions")]},
            "api": api,
        }
    )
    return Home.open(cfg)


async def serve(aiohttp_client: Any, home: Home, bind: str = "127.0.0.1") -> TestClient:
    daemon = Daemon(home.config, bind, 0)
    daemon.home, daemon.collectors = home, make_collectors(home)  # the daemon's real distill
    ctx = AppContext(
        home=home,
        coordinator=Coordinator(home, "mlx"),
        backend="mlx",
        backend_why="test",
        distill=daemon.distill,
        bind_host=bind,
    )
    return await aiohttp_client(make_app(ctx))


@pytest.fixture
def home(tmp_path: Path) -> Any:
    h = make_home(tmp_path)
    for i in range(2):
        h.versions.register(write_adapter(tmp_path / f"adapter{i}", i))
    h.versions.activate("v1.0.0")
    yield h
    h.close()


@pytest.fixture
async def client(aiohttp_client: Any, home: Home) -> TestClient:
    return await serve(aiohttp_client, home)


def state(home: Home) -> dict[str, Any]:
    return {
        "pool": home.pool.stats()["total"],
        "versions": [(v.version, v.status) for v in home.store.versions()],
        "folders": sorted(os.listdir(home.versions.root)),
        "canary": canary.canary_state(home.versions),
        "runs": len(home.store.runs(100)),
        "events": len(home.store.events(None, 10000)),
    }


async def raw(client: TestClient, request: bytes) -> tuple[int, bytes]:
    """Send `request` as is over a fresh loopback connection; the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(request)
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def http(method: str, path: str, host: str | None, body: bytes = b"", **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


def token(home: Home) -> str:
    return auth_headers(home.data)["Authorization"]


async def test_the_token_is_made_at_first_start_owner_only(home: Home, client: TestClient) -> None:
    path = token_path(home.data)
    assert path.stat().st_mode & 0o777 == 0o600
    tok = read_token(home.data)
    assert tok and len(tok) >= 32
    assert path.read_text().strip() == tok


async def test_samctl_sends_the_token_itself(home: Home, client: TestClient) -> None:
    url = f"http://127.0.0.1:{client.port}"
    # With the home's token the request reaches its handler (409: nothing to roll back to).
    code, _ = await asyncio.to_thread(
        Client.for_config(url, home.config).call, "POST", "/api/rollback", {}
    )
    assert code == 409
    code, doc = await asyncio.to_thread(Client(url).call, "POST", "/api/rollback", {})
    assert code == 401 and "Bearer" in doc["error"]


async def test_the_positive_control_passes_and_changes_state(
    home: Home, client: TestClient
) -> None:
    """The same requests the attacks send do work when sent the way a real client does."""
    before = state(home)
    host = f"127.0.0.1:{client.port}"
    body = json.dumps({"records": [RECORD]}).encode()
    req = http(
        "POST",
        "/api/distill",
        host,
        body,
        Content_Type="application/json",
        Authorization=token(home),
        Origin=f"http://localhost:{client.port}",  # this server's own origin is fine
        Sec_Fetch_Site="same-origin",
    )
    status, _ = await raw(client, req)
    assert status == 200 and state(home)["pool"] == before["pool"] + 1
    body = json.dumps({"version": "v1.0.1", "traffic": 10}).encode()
    req = http(
        "POST",
        "/api/canary",
        host,
        body,
        Content_Type="application/json",
        Authorization=token(home),
    )
    status, _ = await raw(client, req)
    assert status == 200 and state(home)["canary"] is not None


def attacks(port: int, tok: str) -> list[tuple[str, dict[str, str], str | None, int]]:
    """(name, headers, Host, expected status) for one mutating request."""
    me = f"127.0.0.1:{port}"
    return [
        ("text/plain + foreign Origin", {"Content_Type": "text/plain", "Origin": "http://evil.example"}, me, 403),
        ("foreign Origin with JSON", {"Content_Type": "application/json", "Origin": "http://evil.example"}, me, 403),
        ("Origin null (sandboxed page)", {"Content_Type": "text/plain", "Origin": "null"}, me, 403),
        ("other localhost port (same-site)", {"Content_Type": "text/plain", "Origin": "http://localhost:3000", "Sec_Fetch_Site": "same-site"}, me, 403),
        ("Sec-Fetch-Site cross-site", {"Content_Type": "text/plain", "Sec_Fetch_Site": "cross-site"}, me, 403),
        ("cross-site even with the token", {"Content_Type": "application/json", "Sec_Fetch_Site": "cross-site", "Authorization": tok}, me, 403),
        ("rebinding: foreign Host", {"Content_Type": "text/plain"}, f"evil.example:{port}", 421),
        ("rebinding: localhost.evil.example", {"Content_Type": "text/plain"}, f"localhost.evil.example:{port}", 421),
        ("rebinding even with the token", {"Content_Type": "application/json", "Authorization": tok}, f"evil.example:{port}", 421),
        ("empty Host", {"Content_Type": "text/plain"}, "", 421),
        ("no Host", {"Content_Type": "text/plain"}, None, 400),  # aiohttp's parser: HTTP/1.1 needs a Host,
        ("Host with another port", {"Content_Type": "application/json", "Authorization": tok}, "localhost:1", 421),
        ("missing token", {"Content_Type": "application/json"}, me, 401),
        ("wrong token", {"Content_Type": "application/json", "Authorization": "Bearer " + "x" * 43}, me, 401),
        ("token in another scheme", {"Content_Type": "application/json", "Authorization": tok.replace("Bearer", "Basic")}, me, 401),
        ("text/plain with the token", {"Content_Type": "text/plain", "Authorization": tok}, me, 415),
        ("no Content-Type with the token", {"Authorization": tok}, me, 415),
    ]  # fmt: skip


@pytest.mark.parametrize("path,payload", MUTATING, ids=[p for p, _ in MUTATING])
async def test_browser_shaped_attacks_are_refused_and_change_nothing(
    home: Home, client: TestClient, path: str, payload: dict[str, Any]
) -> None:
    before = state(home)
    body = json.dumps(payload).encode()
    for name, headers, host, expected in attacks(client.port, token(home)):
        status, answer = await raw(client, http("POST", path, host, body, **headers))
        assert status == expected, (name, answer)
        assert b"Traceback" not in answer and str(home.data).encode() not in answer
    await asyncio.sleep(0.05)  # anything a handler had started would have landed by now
    assert state(home) == before


@pytest.mark.parametrize(
    "path",
    ["/api/self", "/api/history", "/api/versions", "/api/data/stats", "/metrics", "/v1/models"],
)
async def test_rebinding_reads_nothing(home: Home, client: TestClient, path: str) -> None:
    for host in (f"evil.example:{client.port}", f"localhost.evil.example:{client.port}", ""):
        status, answer = await raw(client, http("GET", path, host))
        assert status == 421 and b"v1.0.0" not in answer, host
    status, _ = await raw(client, http("GET", path, f"localhost:{client.port}"))
    assert status in (200, 503)  # /v1/models: chat serving is off in this app


async def test_chat_is_open_to_local_tools_but_not_to_pages(home: Home, client: TestClient) -> None:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    me = f"localhost:{client.port}"
    # curl / the OpenAI SDK on this machine: no token needed, the request reaches the handler.
    status, _ = await raw(
        client, http("POST", "/v1/chat/completions", me, body, Content_Type="application/json")
    )
    assert status == 503  # chat serving is off here: answered by the handler
    for headers, host, expected in (
        ({"Content_Type": "text/plain", "Origin": "http://evil.example"}, me, 403),
        ({"Content_Type": "text/plain", "Sec_Fetch_Site": "cross-site"}, me, 403),
        ({"Content_Type": "text/plain"}, me, 415),
        ({"Content_Type": "application/json"}, f"evil.example:{client.port}", 421),
    ):
        status, answer = await raw(
            client, http("POST", "/v1/chat/completions", host, body, **headers)
        )
        assert status == expected and json.loads(answer)["error"]["message"], headers


async def test_off_loopback_every_request_needs_the_token(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    keys = tmp_path / "chat.keys"
    keys.write_text("chat-key-for-a-remote-editor-0123456789\n")
    keys.chmod(0o600)
    home = make_home(tmp_path, chat_keys_file=str(keys))
    try:
        client = await serve(aiohttp_client, home, bind="0.0.0.0")
        me = f"127.0.0.1:{client.port}"
        auth = token(home)
        for path in ("/api/self", "/api/health", "/metrics", "/v1/models"):
            status, _ = await raw(client, http("GET", path, me))
            assert status == 401, path
            status, _ = await raw(client, http("GET", path, me, Authorization=auth))
            assert status in (200, 503), path
        chat = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
        key = "Bearer chat-key-for-a-remote-editor-0123456789"
        for who, expected in ((None, 401), (key, 503), (auth, 503)):
            extra = {"Authorization": who} if who else {}
            req = http(
                "POST", "/v1/chat/completions", me, chat, Content_Type="application/json", **extra
            )
            assert (await raw(client, req))[0] == expected, who
        # A chat key opens chat only, never the control API.
        req = http(
            "POST", "/api/train", me, b"{}", Content_Type="application/json", Authorization=key
        )
        assert (await raw(client, req))[0] == 401
        assert home.store.runs(10) == []
    finally:
        home.close()


@pytest.mark.parametrize("content", ["", "short\n", None])
def test_off_loopback_without_a_usable_token_the_daemon_refuses_to_start(
    tmp_path: Path, content: str | None
) -> None:
    """An empty, too short or world-readable token file: one line on stderr, nothing listens."""
    data = tmp_path / "home"
    data.mkdir()
    path = token_path(data)
    if content is None:
        path.write_text("x" * 43 + "\n")
        path.chmod(0o644)
    else:
        path.write_text(content)
        path.chmod(0o600)
    (data / "config.toml").write_text(f'[sources]\nsessions_dirs = ["{tmp_path / "s"}"]\n')
    env = dict(os.environ, SAM_BRAIN_HOME=str(data), HF_HUB_OFFLINE="1")
    env.pop("SAM_BRAIN_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "sam_brain.control.daemon", "serve", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sam-brain: {path}"), proc.stderr
    assert "token" in lines[0] or "chmod 600" in lines[0]
    assert path.read_text() == ("x" * 43 + "\n" if content is None else content)  # not replaced


def test_config_check_warns_on_an_off_loopback_bind(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[api]\nhost = "0.0.0.0"\n')
    env = dict(os.environ, SAM_BRAIN_HOME=str(tmp_path / "h"), SAM_BRAIN_CONFIG=str(cfg))
    proc = subprocess.run(
        [sys.executable, "-m", "sam_brain.control.cli", "config", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "config OK" in proc.stdout
    assert "warning: api.host = '0.0.0.0' is off-loopback" in proc.stderr
    cfg.write_text("[api]\nport = 9999\n")
    proc = subprocess.run(
        [sys.executable, "-m", "sam_brain.control.cli", "config", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stderr == ""


async def test_no_path_spelling_turns_a_control_request_into_chat(
    home: Home, client: TestClient
) -> None:
    """Chat's token exemption follows the matched route, not how the path is written."""
    before = state(home)
    me = f"127.0.0.1:{client.port}"
    for path in ("/v1/../api/train", "/v1/%2e%2e/api/train", "//api/train", "/api/train/"):
        req = http("POST", path, me, b'{"force": true}', Content_Type="application/json")
        status, _ = await raw(client, req)
        assert status in (401, 404), path
    assert state(home) == before
