"""An adapter is checked against the base before it is registered: each refusal leaves no trace."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from deployment.adapter_check import AdapterInvalid, check_adapter
from sam_brain.config_load import parse_config
from sam_brain.errors import BadRequest
from sam_brain.home import Home
from sam_brain.train.release import release, start_canary_from

pytestmark = pytest.mark.slow


def test_real_adapters_of_both_backends_pass(
    trained_adapters: dict[str, Path], tiny_model: Path
) -> None:
    assert check_adapter(trained_adapters["mlx"], tiny_model, str(tiny_model)) == ["mlx"]
    # The torch backend writes mlx-lm files at the top and PEFT's in peft/: both are checked.
    assert check_adapter(trained_adapters["cuda"], tiny_model, str(tiny_model)) == ["mlx", "peft"]


def _weights(d: Path, name: str = "adapters.safetensors") -> dict[str, np.ndarray]:
    return dict(load_file(str(d / name)))


def _edit_weights(fn: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        w = _weights(d)
        fn(w)
        save_file(w, str(d / "adapters.safetensors"))

    return edit


def _edit_config(fn: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        c = json.loads((d / "adapter_config.json").read_text())
        fn(c)
        (d / "adapter_config.json").write_text(json.dumps(c))

    return edit


def _first(w: dict[str, np.ndarray], suffix: str) -> str:
    return sorted(k for k in w if k.endswith(suffix))[0]


def _random_bytes(d: Path) -> None:
    # The issue's case: 4 KB of random bytes and an empty config.
    (d / "adapters.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "adapter_config.json").write_text("{}")


def _nan(w: dict[str, np.ndarray]) -> None:
    w[_first(w, "lora_b")][0, 0] = np.nan


def _unknown_module(w: dict[str, np.ndarray]) -> None:
    module = _first(w, "lora_a").removesuffix(".lora_a")
    for part in (".lora_a", ".lora_b"):
        w[module.rsplit(".", 1)[0] + ".nope_proj" + part] = w.pop(module + part)


def _wrong_shape(w: dict[str, np.ndarray]) -> None:
    k = _first(w, "lora_a")
    w[k] = np.zeros((w[k].shape[0] + 1, w[k].shape[1]), np.float32)


def _int_dtype(w: dict[str, np.ndarray]) -> None:
    k = _first(w, "lora_b")
    w[k] = w[k].astype(np.int32)


def _lonely_a(w: dict[str, np.ndarray]) -> None:
    del w[_first(w, "lora_b")]


def _wrong_rank(c: dict[str, Any]) -> None:
    c["lora_parameters"]["rank"] = 4


def _no_base(c: dict[str, Any]) -> None:
    del c["model"]


def _other_base(c: dict[str, Any]) -> None:
    c["model"] = "someone/else-7B"


def _empty_config(d: Path) -> None:
    (d / "adapter_config.json").write_text("{}")


def _truncated(d: Path) -> None:
    data = (d / "adapters.safetensors").read_bytes()
    (d / "adapters.safetensors").write_bytes(data[: len(data) - 100])


REFUSALS: list[tuple[str, Callable[[Path], None], str]] = [
    ("random-bytes", _random_bytes, "not a safetensors file"),
    ("empty-config", _empty_config, "no lora_parameters"),
    ("truncated", _truncated, "do not fit"),
    ("nan", _edit_weights(_nan), "non-finite"),
    ("unknown-module", _edit_weights(_unknown_module), "not a linear module of the base"),
    ("shape", _edit_weights(_wrong_shape), "has shape"),
    ("int-dtype", _edit_weights(_int_dtype), "not a float type"),
    ("lonely-a", _edit_weights(_lonely_a), "lacks its lora_b"),
    ("rank", _edit_config(_wrong_rank), "the base and rank need"),
    ("no-base", _edit_config(_no_base), "does not name its base model"),
    ("other-base", _edit_config(_other_base), "trained on someone/else-7B"),
]


@pytest.fixture
def home(tmp_path: Path, tiny_model: Path) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "training": {"mlx_base_model": str(tiny_model), "cuda_base_model": str(tiny_model)},
        }
    )
    return Home.open(cfg)


def _state(home: Home) -> tuple[list[str], list[str], int]:
    rows = [v.version for v in home.store.versions()]
    return rows, sorted(os.listdir(home.versions.root)), len(home.store.events(None, 1000))


@pytest.mark.parametrize(("name", "damage", "message"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_problem_is_refused_in_one_line_and_nothing_changes(
    name: str,
    damage: Callable[[Path], None],
    message: str,
    trained_adapters: dict[str, Path],
    tiny_model: Path,
    home: Home,
    tmp_path: Path,
) -> None:
    bad = tmp_path / name
    shutil.copytree(trained_adapters["mlx"], bad)
    damage(bad)
    before = _state(home)
    for attempt in (
        lambda: release(home, bad, base_model_dir=str(tiny_model), base_ref=str(tiny_model)),
        lambda: release(
            home, bad, base_model_dir=str(tiny_model), base_ref=str(tiny_model), dry_run=True
        ),
        lambda: start_canary_from(home, str(bad), 10),
    ):
        with pytest.raises(AdapterInvalid) as err:
            attempt()
        assert message in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, BadRequest) and err.value.http_status == 400
        assert err.value.exit_code == 2
    assert _state(home) == before  # no version row, no folder, no event
    home.close()


def test_a_damaged_peft_copy_is_refused_too(
    trained_adapters: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "peft-bad"
    shutil.copytree(trained_adapters["cuda"], bad)
    w = _weights(bad / "peft", "adapter_model.safetensors")
    k = _first(w, "lora_A.weight")
    w[k] = np.full_like(w[k], np.inf)
    save_file(w, str(bad / "peft" / "adapter_model.safetensors"))
    with pytest.raises(AdapterInvalid, match="non-finite"):
        check_adapter(bad, tiny_model, str(tiny_model))


async def test_the_issue_case_over_http_is_a_400_and_nothing_is_registered(
    aiohttp_client: Any, home: Home, tiny_model: Path, tmp_path: Path
) -> None:
    from sam_brain.control.api import make_app
    from sam_brain.control.app import AppContext
    from sam_brain.train.scheduler import Coordinator
    from tests.api_auth import auth_headers

    ctx = AppContext(
        home=home,
        coordinator=Coordinator(home, "mlx"),
        backend="mlx",
        backend_why="test",
        base_ref=str(tiny_model),
        base_model_dir=str(tiny_model),
    )
    client = await aiohttp_client(make_app(ctx))
    bad = home.data / "imports" / "random"  # over HTTP, adapters come from inside the home
    bad.mkdir(parents=True)
    _random_bytes(bad)
    before = _state(home)
    for path, body in (
        ("/api/deploy", {"path": str(bad)}),
        ("/api/deploy", {"path": str(bad), "dry_run": True}),
        ("/api/canary", {"path": str(bad), "traffic": 10}),
    ):
        resp = await client.post(path, json=body, headers=auth_headers(home.data))
        assert resp.status == 400, path
        assert "not a safetensors file" in (await resp.json())["error"]
    assert _state(home) == before
