"""Damaged homes, as a crashing laptop or a careless user leaves them (issue 14).

Each corruption gives its one-line diagnosis through the real CLI, and no version is lost: the
version folders' bytes are compared before and after, and `samctl list` names every version.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sam_brain.config_load import load_config
from sam_brain.control.cli import main
from sam_brain.home import Home
from tests.adapter_files import write_adapter
from tests.daemon_proc import get, spawn, wait

REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def samctl(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The real samctl in its own process (no traceback may reach stderr)."""
    env = {**os.environ, "SAM_BRAIN_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("SAM_BRAIN_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "sam_brain.control.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def folder_digests(versions: Path) -> dict[str, str]:
    return {
        str(f.relative_to(versions)): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(versions.rglob("*"))
        if f.is_file() and f.parent != versions
    }


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with v1.0.0 (deployed, then replaced) and v1.0.1 (active)."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(h))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    (h / "config.toml").write_text("[api]\nport = 9\n")  # no daemon answers: offline commands
    opened = Home.open(load_config(None))
    try:
        for seed in (0, 1):
            v = opened.versions.register(
                write_adapter(tmp_path / f"run{seed}", seed), run_id=f"r{seed}"
            )
            opened.versions.activate(v.version)
    finally:
        opened.close()
    return h


def listed(capsys: pytest.CaptureFixture[str]) -> list[str]:
    code, out, err = run(capsys, "list", "--json")
    assert code == 0, err
    return [f"{v['version']}:{v['status']}" for v in json.loads(out)]


def ingest_examples(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int) -> None:
    from sam_brain.dev.examples import write_example_sessions

    for i in range(n):  # one pool version per pass
        src = tmp_path / f"projects{i}"
        write_example_sessions(src, n_sessions=2, seed=i)
        code, _, err = run(capsys, "ingest", "sessions", str(src), "--now", "--json")
        assert code == 0, err


@pytest.mark.parametrize("damage", ["empty", "missing"])
def test_lost_state_db_is_rebuilt_and_no_version_is_overwritten(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    before = folder_digests(home / "versions")
    if damage == "empty":
        (home / "state.db").write_bytes(b"")
    else:
        (home / "state.db").unlink()
    assert listed(capsys) == ["v1.0.0:inactive", "v1.0.1:active"]
    opened = Home.open(load_config(None))
    try:
        new = opened.versions.register(write_adapter(tmp_path / "run2", 2))
        assert new.version == "v1.0.2"  # not v1.0.0 again over the old folder
        assert opened.versions.rollback_target() is not None  # v1.0.0's deploy time came back
        assert [e["kind"] for e in opened.store.events("state_rebuilt")] == ["state_rebuilt"]
    finally:
        opened.close()
    after = folder_digests(home / "versions")
    assert {k: after[k] for k in before} == before


def test_rebuild_without_versions_json_uses_manifests_and_current_txt(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "state.db").unlink()
    index = home / "versions" / "versions.json"
    index.write_bytes(index.read_bytes()[:100])  # truncated as well
    assert listed(capsys) == ["v1.0.0:inactive", "v1.0.1:active"]
    assert json.loads(index.read_text())["versions"][1]["version"] == "v1.0.1"  # rewritten


def test_a_folder_on_disk_without_a_row_keeps_its_name(home: Path, tmp_path: Path) -> None:
    orphan = home / "versions" / "v1.0.5"
    shutil.copytree(home / "versions" / "v1.0.0", orphan)
    opened = Home.open(load_config(None))
    try:
        assert opened.versions.register(write_adapter(tmp_path / "r", 7)).version == "v1.0.6"
    finally:
        opened.close()
    assert (orphan / "manifest.json").read_text() == (
        home / "versions" / "v1.0.0" / "manifest.json"
    ).read_text()


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_state_db_is_one_line_in_every_command_and_repairable(
    home: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    opened = Home.open(load_config(None))
    for i in range(200):  # enough pages that a cut lands inside the tables
        opened.store.add_event("filler", {"i": i, "pad": "x" * 400})
    opened.close()
    db = home / "state.db"
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2] if damage == "truncated" else os.urandom(len(data)))
    before = folder_digests(home / "versions")
    for args in (["list"], ["status"], ["current"], ["history"], ["data", "stats"]):
        code, out, err = run(capsys, *args)
        assert code == 12, (args, out, err)
        assert err.count("\n") == 1 and "state.db is damaged" in err
        assert "samctl doctor --repair" in err
    proc = samctl(home, "list")
    assert proc.returncode == 12 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    code, out, _ = run(capsys, "doctor")
    assert code == 12 and "PROBLEM state.db" in out
    code, out, _ = run(capsys, "doctor", "--repair")
    assert "state.db set aside" in out and "v1.0.0, v1.0.1" in out
    assert code == 0, out
    assert listed(capsys) == ["v1.0.0:inactive", "v1.0.1:active"]
    after = folder_digests(home / "versions")
    assert {k: after[k] for k in before} == before
    assert [p.name for p in home.glob("state.db.damaged-*")]  # kept for the curious, not deleted


def damage_latest_manifest(home: Path) -> None:
    manifests = sorted((home / "pool" / "samples.lance" / "_versions").glob("*.manifest"))
    latest = manifests[0]  # lance names them u64::MAX - version: the newest sorts first
    latest.write_bytes(latest.read_bytes()[:40])


def test_damaged_pool_manifest_leaves_list_and_status_working(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest_examples(tmp_path, capsys, 2)
    code, out, _ = run(capsys, "data", "stats", "--json")
    good = json.loads(out)
    damage_latest_manifest(home)
    assert listed(capsys) == ["v1.0.0:inactive", "v1.0.1:active"]
    code, out, err = run(capsys, "status")
    assert code == 0, err
    problems = [line for line in out.splitlines() if line.startswith("problem:")]
    assert len(problems) == 1 and "sample pool" in problems[0] and "--from-archive" in problems[0]
    assert "version: v1.0.1" in out
    code, out, err = run(capsys, "data", "stats")
    assert code == 12 and err.count("\n") == 1 and "restore its previous LanceDB version" in err
    code, out, _ = run(capsys, "doctor")
    assert code == 12 and "PROBLEM pool" in out
    code, out, _ = run(capsys, "doctor", "--repair")
    assert "pool restored to version" in out and code == 0, out
    code, out, _ = run(capsys, "data", "stats", "--json")
    restored = json.loads(out)
    assert code == 0 and 0 < restored["total"] < good["total"]  # the pass before the damage


def test_truncated_pool_data_file_reported_by_status_and_api(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_brain.control.status import self_status

    ingest_examples(tmp_path, capsys, 1)
    for f in (home / "pool" / "samples.lance" / "data").glob("*.lance"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, out, err = run(capsys, "status")
    assert code == 0, err
    assert [line for line in out.splitlines() if line.startswith("problem:")]
    opened = Home.open(load_config(None))
    try:
        doc = self_status(opened)
    finally:
        opened.close()
    assert doc["training_stats"]["model_version"] == "v1.0.1"
    assert len(doc["problems"]) == 1 and "sample pool" in doc["problems"][0]
    code, out, _ = run(capsys, "doctor")
    assert code == 12 and "PROBLEM pool" in out
    assert listed(capsys) == ["v1.0.0:inactive", "v1.0.1:active"]


async def test_api_self_answers_200_naming_a_damaged_pool(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], aiohttp_client: Any
) -> None:
    from sam_brain.control.api import make_app
    from sam_brain.control.app import AppContext
    from sam_brain.train.scheduler import Coordinator

    ingest_examples(tmp_path, capsys, 1)
    for f in (home / "pool" / "samples.lance" / "data").glob("*.lance"):
        f.write_bytes(f.read_bytes()[:100])
    opened = Home.open(load_config(None))
    try:
        ctx = AppContext(
            home=opened, coordinator=Coordinator(opened, "mlx"), backend="mlx", backend_why="t"
        )
        client = await aiohttp_client(make_app(ctx))
        resp = await client.get("/api/self")
        assert resp.status == 200
        doc = await resp.json()
        assert "sample pool" in doc["problems"][0]
        assert doc["training_stats"]["deployment"]["total_versions"] == 2
    finally:
        opened.close()


def start_checks(home: Path) -> Home:
    """What the daemon does at start before serving (Daemon._check_home), on the real home."""
    from sam_brain.control.daemon import Daemon

    config = load_config(None)
    daemon = Daemon(config, "127.0.0.1", 9)
    daemon.home = Home.open(config)
    daemon._check_home()
    return daemon.home


def test_truncated_versions_json_is_rewritten_at_start(home: Path) -> None:
    index = home / "versions" / "versions.json"
    good = json.loads(index.read_text())
    index.write_bytes(index.read_bytes()[:77])
    opened = start_checks(home)
    opened.close()
    assert json.loads(index.read_text()) == good


def test_damaged_active_adapter_rolls_back_and_status_says_so(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sam_brain.control.status import self_status

    weights = home / "versions" / "v1.0.1" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, out, _ = run(capsys, "doctor")
    assert code == 12 and "PROBLEM version: v1.0.1" in out and "checksum" in out
    opened = start_checks(home)
    try:
        assert opened.versions.current().version == "v1.0.0"  # type: ignore[union-attr]
        doc = self_status(opened)
    finally:
        opened.close()
    assert doc["training_stats"]["model_version"] == "v1.0.0"
    assert any("rolled back to v1.0.0" in p and "v1.0.1" in p for p in doc["problems"])
    assert listed(capsys) == ["v1.0.0:active", "v1.0.1:rolled_back"]  # none lost


def test_damaged_only_version_falls_back_to_the_base(home: Path) -> None:
    from sam_brain.control.status import self_status

    for name in ("v1.0.0", "v1.0.1"):
        (home / "versions" / name / "adapters.safetensors").write_bytes(b"\x08" + b"\0" * 15)
    opened = start_checks(home)
    try:
        assert opened.versions.current() is None
        assert "rolled back to the base" in self_status(opened)["problems"][-1]
        assert len(opened.store.versions()) == 2
    finally:
        opened.close()


def test_moved_home_keeps_its_versions(home: Path, tmp_path: Path, monkeypatch: Any) -> None:
    # A home made before paths were relative: its rows held absolute paths.
    opened = Home.open(load_config(None))
    with opened.store.tx() as db:
        db.execute("UPDATE versions SET adapter_path = ? || '/versions/' || version", (str(home),))
    opened.close()
    moved = tmp_path / "elsewhere" / "home"
    moved.parent.mkdir()
    shutil.move(str(home), str(moved))
    monkeypatch.setenv("SAM_BRAIN_HOME", str(moved))
    opened = Home.open(load_config(None))
    try:
        active = opened.versions.current()
        assert active is not None and Path(active.adapter_path) == moved / "versions" / "v1.0.1"
        opened.versions.verify("v1.0.0")  # files found and checksums match at the new place
        rows = opened.store._query("SELECT adapter_path FROM versions ORDER BY seq")
        assert [r["adapter_path"] for r in rows] == ["versions/v1.0.0", "versions/v1.0.1"]
    finally:
        opened.close()


def test_idle_polls_write_no_events(home: Path, tmp_path: Path) -> None:
    from sam_brain.dev.examples import write_example_sessions
    from sam_brain.pipeline.ingest import make_collectors, store_result

    src = tmp_path / "projects"
    write_example_sessions(src, n_sessions=2, seed=3)
    (home / "config.toml").write_text(
        f"[api]\nport = 9\n[sources]\nsessions_dirs = [{json.dumps(str(src))},"
        f" {json.dumps(str(tmp_path / 'not-there'))}]\nquiet_minutes = 0\n"
    )
    opened = Home.open(load_config(None))
    try:
        collectors = make_collectors(opened)
        counts = []
        for _ in range(4):
            for kind, collector in collectors.items():
                store_result(opened, kind, collector.collect(opened.store, None))
            counts.append(len(opened.store.events("ingest", limit=1000)))
        assert counts[0] >= 1 and counts[1:] == [counts[0]] * 3  # polls 2-4 wrote nothing
        (src / "-home-dev-demo-project").mkdir(exist_ok=True)
        write_example_sessions(tmp_path / "more", n_sessions=1, seed=9)
        for f in (tmp_path / "more").rglob("*.jsonl"):
            shutil.copy(f, src / "-home-dev-demo-project" / ("new-" + f.name))
        for kind, collector in collectors.items():
            store_result(opened, kind, collector.collect(opened.store, None))
        assert len(opened.store.events("ingest", limit=1000)) > counts[-1]  # news is recorded
    finally:
        opened.close()


def test_events_are_pruned_by_age(home: Path) -> None:
    opened = Home.open(load_config(None))
    try:
        with opened.store.tx() as db:
            db.execute(
                "INSERT INTO events(ts, kind, data) VALUES ('2020-01-01T00:00:00+00:00', 'old', '{}')"
            )
        kept = len(opened.store.events(limit=1000))
        assert opened.store.prune_events(90) == 1
        assert len(opened.store.events(limit=1000)) == kept - 1
        assert opened.store.prune_events(0) == 0
    finally:
        opened.close()


def test_data_export_onto_a_folder_or_unwritable_path_is_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (folder, afile / "x.jsonl"):
        code, _, err = run(capsys, "data", "export", "--out", str(out))
        assert code == 2 and err.count("\n") == 1 and str(out) in err
    assert list(folder.iterdir()) == [] and not list(tmp_path.glob("*.tmp*"))


def test_samctl_into_head_is_quiet(home: Path) -> None:
    opened = Home.open(load_config(None))
    for i in range(5000):
        opened.store.add_event("filler", {"i": i})
    opened.close()
    env = {**os.environ, "SAM_BRAIN_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        f"{sys.executable} -m sam_brain.control.cli history --limit 5000 | head -1",
        shell=True,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1 and proc.stderr == ""


def test_samctl_export_refuses_a_folder_with_user_files(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    (out / "sub" / "deep.txt").write_text("me too")
    (out / "export.json").write_text("{}")
    out.chmod(0o755)
    code, _, err = run(capsys, "export", "v1.0.0", "--format", "mlx", "--out", str(out))
    assert code == 4 and err.count("\n") == 1 and "not a SAM Brain export" in err
    assert (out / "precious.txt").read_text() == "keep me"
    assert (out / "sub" / "deep.txt").read_text() == "me too"
    assert out.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []


def daemon_env(home: Path, tmp_path: Path) -> tuple[dict[str, str], str]:
    from sam_brain.dev.demo import free_port

    port = free_port()
    (tmp_path / "no-sessions").mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f"[api]\nport = {port}\n[sources]\nsessions_dirs = [{json.dumps(str(tmp_path / 'no-sessions'))}]\n"
    )
    env = {**os.environ, "SAM_BRAIN_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("SAM_BRAIN_CONFIG", None)
    return env, f"http://127.0.0.1:{port}"


def test_real_daemon_rebuilds_lost_state_and_rolls_back_a_damaged_adapter(
    home: Path, tmp_path: Path
) -> None:

    env, url = daemon_env(home, tmp_path)
    before = folder_digests(home / "versions")
    (home / "state.db").write_bytes(b"")
    weights = home / "versions" / "v1.0.1" / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    index = home / "versions" / "versions.json"
    log = tmp_path / "daemon.log"
    proc = spawn(env, log)
    try:
        doc = wait(lambda: get(url + "/api/self"), 90, proc, log, poll=0.5)
        ts = doc["training_stats"]
        assert ts["model_version"] == "v1.0.0" and ts["deployment"]["total_versions"] == 2
        assert any("rebuilt" in p for p in doc["problems"]), doc["problems"]
        assert any("rolled back to v1.0.0" in p for p in doc["problems"]), doc["problems"]
        statuses = {r["version"]: r["status"] for r in json.loads(index.read_text())["versions"]}
        assert statuses == {"v1.0.0": "active", "v1.0.1": "rolled_back"}
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert "Traceback" not in log.read_text()
    after = folder_digests(home / "versions")
    assert {k: after[k] for k in before if "v1.0.1/adapters" not in k} == {
        k: v for k, v in before.items() if "v1.0.1/adapters" not in k
    }


def test_real_daemon_refuses_a_garbage_state_db_in_one_line(home: Path, tmp_path: Path) -> None:
    env, _ = daemon_env(home, tmp_path)
    (home / "state.db").write_bytes(os.urandom(8192))
    proc = subprocess.run(
        [sys.executable, "-m", "sam_brain.control.daemon", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 12, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "state.db is damaged" in lines[0], proc.stderr
    assert "samctl doctor --repair" in lines[0]


def test_doctor_is_quiet_on_a_healthy_home_and_names_loose_permissions(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ingest_examples(tmp_path, capsys, 1)
    code, out, _ = run(capsys, "doctor")
    assert code == 0 and "PROBLEM" not in out and "everything is healthy" in out
    assert "ok      versions: 2 of 2 versions intact" in out
    token = home / "api.token"
    token.write_text("secret")
    token.chmod(0o644)
    home.chmod(0o777)
    try:
        code, out, _ = run(capsys, "doctor")
    finally:
        home.chmod(0o755)
    problems = [line for line in out.splitlines() if line.startswith("PROBLEM")]
    assert code == 12 and len(problems) == 2
    assert f"fix: chmod 600 {token}" in out and f"fix: chmod o-w {home}" in out
