"""samctl against a home with the daemon stopped (the commands that must work offline)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sam_brain.control.cli import main


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(h))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    # An unused port: every daemon call must fail fast, as with a stopped daemon.
    (h / "config.toml").write_text("[api]\nport = 9\n")
    return h


def test_ingest_is_idempotent_and_data_commands_work(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_brain.dev.examples import write_example_sessions

    src = tmp_path / "projects"
    write_example_sessions(src, n_sessions=4, seed=1)
    # Bad input next to good: counted under a reason, never fatal.
    (src / "-home-dev-demo-project" / "broken.jsonl").write_bytes(
        b'42\n\x00\x00\x00\n{"type": "user", "mess'
    )
    code, out = run(capsys, "ingest", "sessions", str(src), "--now", "--json")
    assert code == 0, out
    first = json.loads(out)
    assert first["stored"] > 0 and first["inserted"] == first["stored"]
    code, out = run(capsys, "ingest", "sessions", str(src), "--now", "--json")
    again = json.loads(out)
    assert again["inserted"] == 0  # unchanged files: nothing new, nothing duplicated
    code, out = run(capsys, "data", "stats", "--json")
    stats = json.loads(out)
    assert stats["total"] == first["stored"]
    assert sum(stats["by_split"].values()) == stats["total"]
    dest = tmp_path / "all.jsonl"
    code, out = run(capsys, "data", "export", "--split", "all", "--out", str(dest))
    lines = [json.loads(line) for line in dest.read_text().splitlines()]
    assert len(lines) == stats["total"]
    assert all(
        m["role"] in {"system", "user", "assistant", "tool"} for r in lines for m in r["messages"]
    )
    assert stats["skipped"], stats  # the broken file's lines are counted by reason
    some_id = next(iter(first_ids(home)))
    code, out = run(capsys, "data", "show", some_id)
    shown = json.loads(out)
    assert shown["id"] == some_id and shown["meta"] and shown["split"] in {"train", "val", "test"}
    assert run(capsys, "data", "show", "nope")[0] == 3
    code, out = run(capsys, "status")
    assert code == 0 and "daemon: stopped" in out


def first_ids(home: Path) -> list[str]:
    from sam_brain.pool import Pool

    return [s.id for s, _ in Pool(home / "pool").samples()]


@pytest.mark.slow
def test_versions_commands_offline(
    home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    trained_adapters: dict[str, Path],
    tiny_model: Path,
) -> None:
    import shutil

    from sam_brain.config_load import load_config
    from sam_brain.home import Home

    # The tiny model is the base: a canary or deploy checks the adapter against it.
    (home / "config.toml").write_text(
        f'[api]\nport = 9\n[training]\nmlx_base_model = "{tiny_model}"\n'
        f'cuda_base_model = "{tiny_model}"\n'
    )

    h = Home.open(load_config())
    for i in range(2):
        a = tmp_path / f"a{i}"
        a.mkdir()
        (a / "adapters.safetensors").write_bytes(f"w{i}".encode())
        (a / "adapter_config.json").write_text("{}")
        h.versions.activate(h.versions.register(a).version)
    h.close()
    assert run(capsys, "current")[1].strip() == "v1.0.1"
    code, out = run(capsys, "list")
    assert "* v1.0.1" in out and "v1.0.0" in out
    code, out = run(capsys, "rollback")
    assert code == 0 and "v1.0.0" in out
    code, out = run(capsys, "rollback")
    assert code == 4 and "nothing to roll back" in out
    code, out = run(capsys, "rollback", "v7.7.7")
    assert code == 3
    # Canary by hand with the daemon stopped: start, inspect, abort through rollback.
    assert run(capsys, "promote")[0] == 4  # no canary running
    assert run(capsys, "canary", "v1.0.1")[0] == 4  # rolled back: not a canary candidate
    a2 = tmp_path / "a2"
    shutil.copytree(trained_adapters["mlx"], a2)
    code, out = run(capsys, "canary", str(a2), "--traffic", "25", "--json")
    assert code == 0 and json.loads(out) == {"canary": "v1.0.2", "traffic": 25}
    code, out = run(capsys, "stats", "--json")
    stats = json.loads(out)
    assert stats["active"] == "v1.0.0" and stats["by_status"]["canary"] == 1
    code, out = run(capsys, "rollback")
    assert code == 0 and "aborted canary v1.0.2" in out
    code, out = run(capsys, "history", "--json")
    kinds = [e["kind"] for e in json.loads(out)]
    assert "rollback" in kinds and "version_registered" in kinds
    code, out = run(capsys, "deploy", str(a2), "--dry-run", "--json")
    assert code == 0 and json.loads(out)["action"] == "dry-run"
    # a0 holds two bytes of "weights" and `{}`: refused in one line, before anything registers.
    code, out = run(capsys, "deploy", str(tmp_path / "a0"), "--dry-run")
    assert code == 2 and "too short for a safetensors header" in out and out.count("\n") == 1
    (tmp_path / "a0" / "manifest.json").write_text('{"base_model": "someone/else-7B"}')
    code, out = run(capsys, "deploy", str(tmp_path / "a0"), "--dry-run")
    assert code == 8 and "someone/else-7B" in out


def test_errors_are_one_line_with_documented_codes(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(capsys, "train", "--force")
    assert code == 9 and out.count("\n") == 1 and "sam-brain serve" in out
    (home / "config.toml").write_text("[api]\nport = 'x'\n")
    code, out = run(capsys, "status")
    assert code == 2 and "api.port" in out


def test_console_scripts_are_installed() -> None:
    bindir = Path(sys.executable).parent
    for script in ("samctl", "sam-brain"):
        out = subprocess.run([str(bindir / script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "usage" in out.stdout
