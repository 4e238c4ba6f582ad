"""Feedback from use: the conversation log and `POST /v1/feedback`, over real HTTP on loopback.

The real control app (security middleware included) serves the tiny model's chat server; the
completions come from the official `openai` client, so the ids fed back are the ones a real
client sees. Asserted: what the log holds (and that nothing is logged when it is off), that a
secret from the shared fixtures never reaches it, exact sample and pair counts in the pool,
idempotence, the refusals, the dataset a later training would read, and forgetting.
"""

from __future__ import annotations

import base64
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from deployment.serving import ChatServer
from sam_brain.config_load import parse_config
from sam_brain.control.api import make_app
from sam_brain.control.app import CTX, AppContext
from sam_brain.control.chat_setup import make_chat
from sam_brain.control.cli import main
from sam_brain.control.feedback import log_dir, open_chat_log
from sam_brain.home import Home
from sam_brain.protocols import Sample
from sam_brain.train.dataset import SAMPLES, build_dataset
from sam_brain.train.scheduler import Coordinator
from tests.api_auth import auth_headers

SECRETS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "secrets"
CHAT_KEY = "chat-key-for-remote-clients-0123456789"


def fixture_secret() -> tuple[str, str]:
    """(a line holding a secret, the secret) from the shared scanner fixtures."""
    path = SECRETS / "positives.b64.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row["kind"] == "gitleaks:aws-access-token" and row.get("secrets_b64"):
            text = base64.b64decode(row["text_b64"]).decode()
            return text, base64.b64decode(row["secrets_b64"][0]).decode()
    pytest.skip("no aws-access-token row in the fixtures")


def make_home(tmp_path: Path, log: bool) -> Home:
    keys = tmp_path / "chat.keys"
    keys.write_text(CHAT_KEY + "\n")
    os.chmod(keys, 0o600)
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "api": {"chat_keys_file": str(keys)},
            # Everything in train and nothing held out, so the dataset counts below are exact.
            "pipeline": {"split": [1.0, 0.0, 0.0]},
            "deployment": {"log_conversations": log, "gate_holdout_share": 0.0},
        }
    )
    return Home.open(cfg)


Served = tuple[TestClient[Any, Any], AsyncOpenAI, Home]


async def serve(aiohttp_client: Any, home: Home, tiny_model: Path, bind: str = "") -> Served:
    chat = ChatServer(
        home.versions, tiny_model, default_max_tokens=24, chat_log=open_chat_log(home)
    )
    ctx = AppContext(
        home=home,
        coordinator=Coordinator(home, "mlx"),
        backend="mlx",
        backend_why="t",
        chat=chat,
        bind_host=bind,
    )
    client: TestClient[Any, Any] = await aiohttp_client(make_app(ctx))
    oai = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    return client, oai, home


@pytest.fixture
async def logged(aiohttp_client: Any, tmp_path: Path, tiny_model: Path) -> AsyncIterator[Served]:
    home = make_home(tmp_path, log=True)
    served = await serve(aiohttp_client, home, tiny_model)
    yield served
    await served[1].close()
    close_chat(served[0])
    home.close()


def close_chat(client: TestClient[Any, Any]) -> None:
    chat = client.app[CTX].chat if client.app is not None else None
    if chat is not None:
        chat.close()


async def ask(oai: AsyncOpenAI, prompt: str, temperature: float = 0.0) -> tuple[str, str]:
    """(completion id, answer) from a non-streamed completion."""
    done = await oai.chat.completions.create(
        model="sam-brain",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=temperature,
    )
    return done.id, done.choices[0].message.content or ""


async def ask_streamed(oai: AsyncOpenAI, prompt: str) -> tuple[str, str]:
    stream = await oai.chat.completions.create(
        model="sam-brain",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        stream=True,
    )
    ids: set[str] = set()
    text: list[str] = []
    async for chunk in stream:
        ids.add(chunk.id)
        text.extend(c.delta.content or "" for c in chunk.choices)
    assert len(ids) == 1
    return ids.pop(), "".join(text)


def log_lines(home: Home) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(log_dir(home).glob("*-*-*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def feedback_rows(home: Home) -> list[tuple[Sample, str]]:
    return [(s, split) for s, split in home.pool.samples() if s.source == "feedback"]


def kinds(home: Home) -> Counter[str]:
    return Counter(s.kind for s, _ in feedback_rows(home))


async def give(client: TestClient[Any, Any], home: Home, **body: Any) -> tuple[int, Any]:
    resp = await client.post("/v1/feedback", json=body, headers=auth_headers(home.data))
    return resp.status, await resp.json()


async def test_nothing_is_logged_when_logging_is_off(
    aiohttp_client: Any, tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, log=False)
    client, oai, _ = await serve(aiohttp_client, home, tiny_model)
    try:
        cid, answer = await ask(oai, "How do I list the files in a folder?")
        sid, _ = await ask_streamed(oai, "And the hidden ones?")
        assert answer and cid.startswith("chatcmpl-") and sid != cid
        assert not log_dir(home).exists()
        assert [p.name for p in home.data.rglob("*.jsonl")] == []
        status, body = await give(client, home, completion_id=cid, kind="up")
        assert status == 409 and "deployment.log_conversations" in body["error"]["message"]
        assert home.pool.stats()["total"] == 0
    finally:
        await oai.close()
        close_chat(client)
        home.close()


async def test_served_completions_are_logged_scrubbed(logged: Served) -> None:
    client, oai, home = logged
    line, secret = fixture_secret()
    prompt = f"My deploy fails with this config:\n{line}\nWhat is wrong?"
    cid, answer = await ask(oai, prompt)
    sid, streamed = await ask_streamed(oai, "How do I undo the last commit?")
    lines = log_lines(home)
    assert [(d["id"], d["stream"]) for d in lines] == [(cid, False), (sid, True)]
    assert [d["answer"] for d in lines] == [answer, streamed]
    assert {(d["model"], d["version"], d["finish_reason"]) for d in lines} == {
        ("sam-brain", "base", "length")
    }
    first = lines[0]["messages"][0]["content"]
    assert "[REDACTED:" in first and "What is wrong?" in first
    raw = b"".join(p.read_bytes() for p in log_dir(home).iterdir())
    assert secret.encode() not in raw
    assert all(p.stat().st_mode & 0o077 == 0 for p in log_dir(home).iterdir())
    # The feedback built from that conversation is scrubbed too.
    status, body = await give(client, home, completion_id=cid, kind="up")
    assert status == 200 and body["stored"] == 1
    assert all(secret not in s.text() for s, _ in feedback_rows(home))


async def test_feedback_becomes_samples_and_pairs(
    logged: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    client, oai, home = logged
    up, _ = await ask(oai, "How do I list the files in a folder with their sizes?")
    fix, _ = await ask(oai, "Which command shows the current git branch?")
    regen = [await ask(oai, "Name a tool that formats Python code.", 1.0) for _ in range(3)]
    assert len({a for _, a in regen}) == 3  # three different answers to choose between
    down, _ = await ask(oai, "How do I stop a runaway process?")

    assert (await give(client, home, completion_id=up, kind="up"))[0] == 200
    status, body = await give(
        client, home, completion_id=fix, kind="correction", text="git branch --show-current"
    )
    assert status == 200 and (body["samples"], body["pairs"], body["stored"]) == (1, 1, 2)
    status, body = await give(client, home, completion_id=regen[1][0], kind="choice")
    assert status == 200 and (body["pairs"], body["stored"]) == (2, 2)  # over the other two
    assert (await give(client, home, completion_id=down, kind="down"))[0] == 200
    assert kinds(home) == Counter({"sft": 2, "preference": 3})  # a thumbs-down teaches nothing

    # The thumbs-down stays as a negative signal on the pair that later rejects that answer.
    text = "Find it with `ps aux | grep name`, then run `kill PID`."
    status, body = await give(client, home, completion_id=down, kind="correction", text=text)
    assert status == 200 and body["stored"] == 2, (body["dropped"], body["stored"])
    rows = feedback_rows(home)
    assert Counter(s.kind for s, _ in rows) == Counter({"sft": 3, "preference": 4})
    rated = [s for s, _ in rows if s.meta.get("rejected_rating") == "down"]
    assert len(rated) == 1 and rated[0].chosen == text and rated[0].meta["completion_id"] == down
    assert {s.tier for s, _ in rows} == {"A"}
    choice = {s.rejected for s, _ in rows if s.meta.get("feedback") == "choice"}
    assert choice == {regen[0][1], regen[2][1]}

    # The same feedback again changes nothing: stable ids, and the latest per kind wins.
    before = sorted((s.id, s.text()) for s, _ in rows)
    await give(client, home, completion_id=up, kind="up")
    await give(client, home, completion_id=regen[1][0], kind="choice")
    await give(client, home, completion_id=fix, kind="correction", text="git branch --show-current")
    assert sorted((s.id, s.text()) for s, _ in feedback_rows(home)) == before
    stats = await (await client.get("/api/feedback")).json()
    assert {k: stats[k] for k in ("thumbs_up", "thumbs_down", "corrections", "choices")} == {
        "thumbs_up": 1,
        "thumbs_down": 1,
        "corrections": 2,
        "choices": 1,
    }
    assert stats["logged_completions"] == 6 and stats["pool_samples"] == 7
    # `samctl data stats` shows the same counts, from the home (no daemon needed).
    toml = home.data.parent / "config.toml"
    toml.write_text(f'data_dir = "{home.data}"\n[deployment]\nlog_conversations = true\n')
    assert main(["--config", str(toml), "data", "stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["feedback"] == stats

    # Taking a thumbs-up back removes its sample; giving it again restores it.
    await give(client, home, completion_id=up, kind="down")
    assert kinds(home) == Counter({"sft": 2, "preference": 4})
    await give(client, home, completion_id=up, kind="up")
    assert kinds(home) == Counter({"sft": 3, "preference": 4})

    # A training after the feedback reads it: every SFT sample and every pair is in the dataset.
    out = home.data / "dataset-check"
    counts = build_dataset(home, out)
    assert counts["train"] + counts["val"] + counts["test"] == 3 and counts["preference"] == 4
    used = json.loads((out / SAMPLES).read_text())
    assert {s.id for s, _ in feedback_rows(home)} == set(used)
    prefs = [json.loads(x) for x in (out / "preference.jsonl").read_text().splitlines()]
    assert text in {p["chosen"] for p in prefs}
    rows_text = "".join((out / f).read_text() for f in ("train.jsonl", "valid.jsonl"))
    assert "git branch --show-current" in rows_text


async def test_bad_feedback_is_refused_with_a_reason(logged: Served) -> None:
    client, oai, home = logged
    cid, answer = await ask(oai, "How do I count lines in a file?")
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"completion_id": "chatcmpl-nope", "kind": "up"}, 404, "no logged completion"),
        ({"completion_id": cid, "kind": "meh"}, 400, "'kind' must be one of"),
        ({"completion_id": cid, "kind": "correction"}, 400, "needs 'text'"),
        ({"completion_id": cid, "kind": "correction", "text": answer}, 400, "answer itself"),
        ({"completion_id": cid, "kind": "choice"}, 400, "nothing"),
        ({"completion_id": cid, "kind": "choice", "over": ["chatcmpl-x"]}, 404, "chatcmpl-x"),
        ({"completion_id": cid, "kind": "up", "text": "x"}, 400, "'text' goes only"),
        ({"completion_id": cid, "kind": "up", "stars": 5}, 400, "unknown field"),
    ]
    for body, status, message in cases:
        got, doc = await give(client, home, **body)
        assert (got, message in json.dumps(doc)) == (status, True), (body, doc)
    assert home.pool.stats()["total"] == 0


async def test_feedback_needs_a_key_and_refuses_other_origins(logged: Served) -> None:
    client, oai, home = logged
    cid, _ = await ask(oai, "How do I see disk usage?")
    token = auth_headers(home.data)
    body = json.dumps({"completion_id": cid, "kind": "up"})
    refused = [
        (
            {"Content-Type": "application/json"},
            401,
        ),  # no key: chat is open on loopback, this is not
        ({"Content-Type": "application/json", "Authorization": "Bearer wrong"}, 401),
        ({**token, "Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        ({**token, "Content-Type": "application/json", "Sec-Fetch-Site": "cross-site"}, 403),
        ({**token, "Content-Type": "text/plain"}, 415),
        ({**token, "Content-Type": "application/json", "Host": "evil.example"}, 421),
    ]
    for headers, status in refused:
        resp = await client.post("/v1/feedback", data=body, headers=headers)
        assert resp.status == status, headers
    assert home.pool.stats()["total"] == 0 and not (log_dir(home) / "feedback.jsonl").exists()
    # A chat key is enough (a remote chat client has no API token), and so is the token.
    chat_key = {"Authorization": f"Bearer {CHAT_KEY}", "Content-Type": "application/json"}
    resp = await client.post("/v1/feedback", data=body, headers=chat_key)
    assert resp.status == 200 and kinds(home) == Counter({"sft": 1})
    # The official client sends its key as a bearer too: feedback from the same client object.
    keyed = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key=CHAT_KEY, max_retries=0)
    try:
        doc = await keyed.post(
            "/feedback", body={"completion_id": cid, "kind": "down"}, cast_to=object
        )
    finally:
        await keyed.close()
    assert isinstance(doc, dict) and doc["kind"] == "down" and kinds(home) == Counter()


async def test_off_loopback_a_chat_key_opens_feedback_but_not_the_control_api(
    logged: Served, aiohttp_client: Any, tiny_model: Path
) -> None:
    _, oai, home = logged
    cid, _ = await ask(oai, "How do I show the last five commits?")
    remote, remote_oai, _ = await serve(aiohttp_client, home, tiny_model, bind="0.0.0.0")
    await remote_oai.close()
    close_chat(remote)
    key = {"Authorization": f"Bearer {CHAT_KEY}"}
    assert (await remote.get("/api/feedback")).status == 401  # off-loopback: reads need it too
    assert (await remote.get("/api/feedback", headers=key)).status == 401  # chat keys: /v1 only
    assert (await remote.get("/api/feedback", headers=auth_headers(home.data))).status == 200
    body = {"completion_id": cid, "kind": "up"}
    assert (await remote.post("/v1/feedback", json=body)).status == 401
    assert (await remote.post("/v1/feedback", json=body, headers=key)).status == 200
    assert kinds(home) == Counter({"sft": 1})


async def test_forget_source_feedback_removes_samples_and_log_lines(logged: Served) -> None:
    client, oai, home = logged
    cid, answer = await ask(oai, "How do I rename a git branch?")
    await give(client, home, completion_id=cid, kind="correction", text="git branch -m old new")
    assert kinds(home) == Counter({"sft": 1, "preference": 1})
    resp = await client.post(
        "/api/data/forget",
        json={"source": "feedback", "confirm": True},
        headers=auth_headers(home.data),
    )
    assert resp.status == 200 and (await resp.json())["samples"] == 2
    assert feedback_rows(home) == []
    assert answer not in "".join(json.dumps(d) for d in log_lines(home))
    # Its log line went too, so feedback on it again finds nothing to bring back.
    status, _ = await give(client, home, completion_id=cid, kind="up")
    assert status == 404 and feedback_rows(home) == []


async def test_pairs_on_a_long_conversation_are_all_kept(logged: Served) -> None:
    """Every pair repeats the prompt; near-duplicate detection would merge them all."""
    client, oai, home = logged
    prompt = " ".join(f"step {i}: run the build, read the log, fix the error." for i in range(60))
    regen = [await ask(oai, prompt, 1.0) for _ in range(3)]
    assert len({a for _, a in regen}) == 3
    status, body = await give(client, home, completion_id=regen[0][0], kind="choice")
    assert (status, body["pairs"], body["stored"]) == (200, 2, 2)
    assert (await give(client, home, completion_id=regen[0][0], kind="up"))[0] == 200
    assert kinds(home) == Counter({"sft": 1, "preference": 2})


def test_the_daemon_logs_only_when_the_config_asks(tmp_path: Path, tiny_model: Path) -> None:
    from sam_brain.control.daemon import Daemon

    for log in (False, True):
        (tmp_path / str(log)).mkdir()
        home = make_home(tmp_path / str(log), log)
        daemon = Daemon(home.config, "127.0.0.1", 0)
        daemon.home = home
        chat, _ = make_chat(daemon.home, str(tiny_model), "")
        assert chat is not None and (chat.chat_log is not None) == log
        if chat.chat_log is not None:
            assert chat.chat_log.directory == log_dir(home) and chat.chat_log.keep_days == 30
        chat.close()
        home.close()


async def test_without_chat_serving_feedback_says_why(aiohttp_client: Any, tmp_path: Path) -> None:
    home = make_home(tmp_path, log=True)
    ctx = AppContext(
        home=home,
        coordinator=Coordinator(home, "mlx"),
        backend="mlx",
        backend_why="t",
        chat_unavailable="chat serving is off (deployment.serve_chat = false)",
    )
    try:
        client = await aiohttp_client(make_app(ctx))
        status, body = await give(client, home, completion_id="chatcmpl-1", kind="up")
        assert status == 503 and "deployment.serve_chat" in body["error"]["message"]
    finally:
        home.close()
