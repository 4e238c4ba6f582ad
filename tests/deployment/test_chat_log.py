"""The conversation log on its own: whole lines under concurrent appends, retention, torn lines."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from deployment.chat_log import ChatLog, Served, log_served, prompt_key
from sam_brain.protocols import Message

DAY = 86400.0


def upper(messages: list[Message], answer: str) -> tuple[list[Message], str]:
    """A stand-in scrubber that shows it ran: the pipeline's is wired in by the control layer."""
    return [{**m, "content": str(m["content"]).upper()} for m in messages], answer.upper()


def served(i: int, at: float, prompt: str = "list the files") -> Served:
    return Served(
        id=f"chatcmpl-{i}",
        model="sam-brain",
        version="v1.0.0",
        messages=[{"role": "user", "content": prompt}],
        answer=f"answer {i} " + "x" * (i % 7) * 300,  # lines of varied length
        finish_reason="stop",
        stream=bool(i % 2),
        time=at,
    )


def test_concurrent_appends_keep_every_line_whole(tmp_path: Path) -> None:
    log = ChatLog(tmp_path / "log", upper)
    now = time.time()

    def writer(start: int) -> None:
        for i in range(start, start + 50):
            log.record(served(i, now))

    threads = [threading.Thread(target=writer, args=(k * 50,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (path,) = log.files()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sorted(d["id"] for d in lines) == sorted(f"chatcmpl-{i}" for i in range(400))
    assert {d["messages"][0]["content"] for d in lines} == {"LIST THE FILES"}  # scrubbed
    assert path.stat().st_mode & 0o777 == 0o600
    assert log.find("chatcmpl-123") == next(d for d in lines if d["id"] == "chatcmpl-123")
    key = prompt_key([{"role": "user", "content": "LIST THE FILES"}])
    assert len(log.same_prompt(key, now)) == 400


def test_old_days_are_deleted_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    now = time.time()
    earlier = ChatLog(tmp_path / "log", upper, keep_days=0)  # the days before: kept all
    for age in (10, 5, 4.5, 2, 1):
        earlier.record(served(int(age * 10), now - age * DAY))
    assert len(earlier.files()) == 5
    log = ChatLog(tmp_path / "log", upper, keep_days=3)
    log.record(served(0, now))  # the first line of a day prunes
    assert len(log.files()) == 3 and log.find("chatcmpl-45") is None
    assert log.find("chatcmpl-20") is not None
    with log.files()[0].open("ab") as fh:
        fh.write(b'{"id": "chatcmpl-torn", "messages": [')  # a crash mid-write
    assert log.find("chatcmpl-torn") is None
    assert [d["id"] for d in log.entries()] == ["chatcmpl-0", "chatcmpl-10", "chatcmpl-20"]
    assert ChatLog(tmp_path / "all", upper, keep_days=0).prune(now + 1000 * DAY) == 0


async def test_a_failing_scrubber_writes_nothing_and_fails_nothing(tmp_path: Path) -> None:
    def broken(messages: list[Message], answer: str) -> tuple[list[Message], str]:
        raise RuntimeError("scrubber failed")

    log = ChatLog(tmp_path / "log", broken)
    await log_served(log, served(1, time.time()))  # logged as an error, not raised
    await log_served(None, served(2, time.time()))  # logging off
    assert log.files() == [] and not (tmp_path / "log").exists()
    with pytest.raises(RuntimeError):
        log.record(served(3, time.time()))
