"""Deploy paths are confined, symlinks are never followed, and no /api body makes a 5xx.

Real aiohttp over loopback on a real home, requests sent with the token and JSON as samctl does,
so every refusal below comes from the handlers' own validation, not from the security checks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from deployment import canary
from sam_brain.config_load import parse_config
from sam_brain.control.api import make_app
from sam_brain.control.app import AppContext
from sam_brain.control.cli_deploy import staged
from sam_brain.errors import PromotionRejected
from sam_brain.home import Home
from sam_brain.train.scheduler import Coordinator
from tests.adapter_files import write_adapter
from tests.api_auth import auth_headers
from tests.control.test_security import RECORD, make_home, serve, state

SECRET = "root:x:0:0:the-file-that-must-not-leak"


@pytest.fixture
def home(tmp_path: Path, tiny_model: Path) -> Any:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "sessions")]},
            "training": {"backend": "mlx", "mlx_base_model": str(tiny_model)},
        }
    )
    h = Home.open(cfg)
    yield h
    h.close()


@pytest.fixture
async def client(aiohttp_client: Any, home: Home, tiny_model: Path) -> TestClient:
    ctx = AppContext(
        home=home,
        coordinator=Coordinator(home, "mlx"),
        backend="mlx",
        backend_why="test",
        base_ref=str(tiny_model),
        base_model_dir=str(tiny_model),
    )
    return await aiohttp_client(make_app(ctx))


async def post(client: TestClient, home: Home, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {**auth_headers(home.data), "Content-Type": "application/json"}
    resp = await client.post(path, data=data, headers=headers)
    text = await resp.text()
    return resp.status, text


def real_adapter(tiny_model: Path, folder: Path) -> Path:
    """A LoRA adapter of the tiny model that passes the adapter check (names its base)."""
    from tests.deployment.conftest import write_adapter

    write_adapter(tiny_model, folder, 1, ["self_attn.q_proj"])
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "model": str(tiny_model)}))
    return folder


def with_leak(folder: Path, tmp_path: Path) -> Path:
    secret = tmp_path / "passwd"
    secret.write_text(SECRET)
    (folder / "leak.json").symlink_to(secret)
    (folder / "extra.json").write_text("{}")
    return folder


def test_register_never_follows_a_symlink(home: Home, tmp_path: Path) -> None:
    src = with_leak(write_adapter(tmp_path / "a", 1), tmp_path)
    v = home.versions.register(src)
    stored = Path(v.adapter_path)
    assert sorted(p.name for p in stored.iterdir()) == [
        "adapter_config.json",
        "adapters.safetensors",
        "extra.json",
        "manifest.json",
    ]
    assert not any(
        SECRET in p.read_text(errors="replace")
        for p in home.versions.root.rglob("*")
        if p.is_file()
    )


def test_a_symlinked_adapter_file_is_refused_and_nothing_registered(
    home: Home, tmp_path: Path
) -> None:
    real = write_adapter(tmp_path / "real", 1)
    src = tmp_path / "linked"
    src.mkdir()
    (src / "adapters.safetensors").symlink_to(real / "adapters.safetensors")
    (src / "adapter_config.json").write_text(json.dumps({"num_layers": 1}))
    before = state(home)
    with pytest.raises(PromotionRejected, match="symlink"):
        home.versions.register(src)
    assert state(home) == before


async def test_a_deployed_folders_symlink_is_not_copied_over_http(
    home: Home, client: TestClient, tiny_model: Path, tmp_path: Path
) -> None:
    folder = real_adapter(tiny_model, home.data / "imports" / "a")
    with_leak(folder, tmp_path)
    status, text = await post(client, home, "/api/canary", {"path": str(folder), "traffic": 10})
    assert status == 200, text
    v = json.loads(text)["canary"]
    stored = Path(v["adapter_path"])
    assert (stored / "extra.json").is_file() and not (stored / "leak.json").exists()
    assert SECRET not in "".join(p.read_text(errors="replace") for p in stored.iterdir())


async def test_paths_outside_the_home_get_one_answer(
    home: Home, client: TestClient, tmp_path: Path
) -> None:
    """Existing folder, file, missing path, unreadable, `~`, relative, a link out of the home:
    all the same 400, so the answers map nothing of the file system."""
    outside = write_adapter(tmp_path / "outside", 1)
    link = home.data / "imports" / "link"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)
    before = state(home)
    answers = set()
    for p in [
        "/etc",
        "/etc/passwd",
        "/nonexistent/adapter",
        "/root",
        str(outside),
        str(link),
        "~",
        "~nonexist",
        "~/.ssh",
        "data/imports",
        "../../etc",
        str(home.data / ".." / ".." / "outside"),
        str(home.data / "nope"),
        str(home.data / "state.db"),  # inside, but not a folder
    ]:
        for endpoint, body in (
            ("/api/deploy", {"path": p}),
            ("/api/deploy", {"path": p, "dry_run": True}),
            ("/api/canary", {"path": p, "traffic": 10}),
        ):
            status, text = await post(client, home, endpoint, body)
            assert status == 400, (endpoint, p, text)
            answers.add(text)
    assert answers == {
        json.dumps(
            {
                "error": "field 'path' must name an adapter folder inside the home or"
                " deployment.import_dirs",
                "type": "BadRequest",
            }
        )
    }
    assert state(home) == before


async def test_import_dirs_widen_the_confinement(
    aiohttp_client: Any, tmp_path: Path, tiny_model: Path
) -> None:
    imports = tmp_path / "adapters"
    folder = real_adapter(tiny_model, imports / "a")
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "sources": {"sessions_dirs": [str(tmp_path / "s")]},
            "training": {"backend": "mlx", "mlx_base_model": str(tiny_model)},
            "deployment": {"import_dirs": [str(imports)]},
        }
    )
    home = Home.open(cfg)
    try:
        client = await serve(aiohttp_client, home)
        status, text = await post(client, home, "/api/canary", {"path": str(folder)})
        assert status == 200, text
        assert canary.canary_state(home.versions) is not None
    finally:
        home.close()


async def test_refused_canary_requests_copy_nothing(
    home: Home, client: TestClient, tmp_path: Path
) -> None:
    """Seen: thirty refused canary requests registered thirty adapter copies."""
    folder = write_adapter(home.data / "imports" / "a", 1)
    before = state(home)
    bad = [0, 101, -5, 1000, "10", True, 1.5, None, [10]] * 3 + [0, 0, 0]
    for traffic in bad:
        status, text = await post(
            client, home, "/api/canary", {"path": str(folder), "traffic": traffic}
        )
        assert status == 400, (traffic, text)
    assert state(home) == before
    # While a canary runs, a second one by path is a 409 before anything is copied.
    home.versions.register(write_adapter(tmp_path / "b", 2))
    canary.start_canary(home.versions, "v1.0.0", 10)
    during = state(home)
    for _ in range(30):
        status, text = await post(client, home, "/api/canary", {"path": str(folder)})
        assert status == 409, text
    assert state(home) == during


def test_samctl_stages_an_outside_folder_into_the_home(home: Home, tmp_path: Path) -> None:
    """The CLI takes any path: it copies the folder under the home (links as links) for the
    daemon, and removes the copy afterwards."""
    src = with_leak(write_adapter(tmp_path / "mine", 1), tmp_path)
    (src / "0000100_adapters.safetensors").write_bytes(b"checkpoint")
    with staged(src, home.config) as path:
        copy = Path(path)
        assert copy.is_relative_to(home.data / "imports")
        assert (copy / "leak.json").is_symlink()
        assert not (copy / "0000100_adapters.safetensors").exists()
        assert (copy / "adapters.safetensors").read_bytes() == (
            src / "adapters.safetensors"
        ).read_bytes()
    assert not copy.exists()
    inside = write_adapter(home.data / "imports" / "x", 2)
    with staged(inside, home.config) as path:
        assert path == str(inside.resolve())


FUZZ: list[bytes | dict[str, Any]] = [
    b"[" * 100_000,
    b'{"a":' * 50_000,
    b"[" * 40 + b"]" * 40,
    b'{"records": ' + b"[" * 60 + b"]" * 60 + b"}",
    b"\xff\xfe",
    b'{"version": "\xff"}',
    b'{"version": "\\ud800"}',
    b'{"\\udfff": 1}',
    b'{"records": [{"kind": "reasoning", "prompt": "\\ud83d", "answer": "x"}]}',
    b'{"force": NaN}',
    b"null",
    b"1",
    b'"x"',
    b"[]",
    {"version": "v1\u0000"},
    {"path": "/tmp\u0000/x"},
    {"records": [{**RECORD, "prompt": "a\u0000b"}]},
    {"version": "v" * 100_000},
    {"path": "/" + "a" * 10_000},
    {"description": "d" * 100_000, "path": "/x"},
    {"path": "~nonexist"},
    {"path": "/etc", "test": "/etc"},
    {"path": "/etc/passwd", "test": "/etc/passwd"},
    {"path": None},
    {"path": 5},
    {"path": ["x"]},
    {"path": {"a": 1}},
    {"traffic": 10**100, "version": "v1.0.0"},
    {"traffic": 1e308, "version": "v1.0.0"},
    {"version": "../../etc"},
    {"version": ""},
    {"records": []},
    {"records": [None, 1, "x", [], {}]},
    {"record": "x"},
    {"force": 1},
]


@pytest.mark.parametrize(
    "endpoint",
    [
        "/api/train",
        "/api/train/cancel",
        "/api/distill",
        "/api/rollback",
        "/api/deploy",
        "/api/canary",
        "/api/promote",
    ],
)
async def test_fuzzed_api_bodies_never_get_a_5xx(
    aiohttp_client: Any, tmp_path: Path, endpoint: str
) -> None:
    home = make_home(tmp_path)
    try:
        home.versions.register(write_adapter(tmp_path / "a", 1))
        client = await serve(aiohttp_client, home)
        before = state(home)
        statuses = []
        for body in FUZZ:
            status, text = await post(client, home, endpoint, body)
            assert status < 500, (endpoint, body if len(str(body)) < 200 else "...", text)
            assert "Traceback" not in text
            statuses.append(status)
        big = b'{"records": ["' + b"x" * (17 * 2**20) + b'"]}'
        status, _ = await post(client, home, endpoint, big)
        assert status == 413
        # A body within the app's limit but above a control request's bound is refused too.
        if endpoint != "/api/distill":
            status, _ = await post(client, home, endpoint, {"x": "y" * 300_000})
            assert status == 413
        assert state(home)["versions"] == before["versions"]
        assert state(home)["pool"] == before["pool"]
        assert 400 in statuses
    finally:
        home.close()
