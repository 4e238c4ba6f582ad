"""The conversation log: each served chat completion, scrubbed, one JSON line in a daily file.

Off unless `deployment.log_conversations` is set. The control layer builds the `ChatLog` and
hands it the scrubber (deployment does not import the pipeline), so every line is scrubbed the way
a sample is before it is written; a line that cannot be scrubbed is not written at all. Files are
`<dir>/YYYY-MM-DD.jsonl` (UTC day, mode 0600): one `os.write` of a whole line on an `O_APPEND`
descriptor, so a line is never interleaved with another, and a torn last line (a crash mid-write)
is skipped when reading. Files older than `keep_days` are deleted. `find` looks a completion up
by the id its client got, which is how `POST /v1/feedback` names the answer it is about.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sam_brain.protocols import Message

log = logging.getLogger(__name__)

Scrub = Callable[[list[Message], str], tuple[list[Message], str]]
"""(request messages, answer) -> the same, with secrets redacted (the pipeline's scrubber)."""

DAY_FILE = re.compile(r"^(\d{4}-\d{2}-\d{2})\.jsonl$")


@dataclass(frozen=True)
class Served:
    """One completion as it was served: what the client asked, what it got, and by whom."""

    id: str  # the completion id the client received (`chatcmpl-...`)
    model: str  # the model id the client asked for ("sam-brain", a version, "base")
    version: str  # the version that answered ("base": no adapter)
    messages: list[Message]
    answer: str
    finish_reason: str
    stream: bool
    time: float


def prompt_key(messages: list[Message]) -> str:
    """The same prompt gets the same key: how regenerations of one prompt are found."""
    body = json.dumps(messages, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()[:24]


class ChatLog:
    """Append-only daily JSONL files of served completions, scrubbed before they are written."""

    def __init__(self, directory: Path, scrub: Scrub, keep_days: int = 30) -> None:
        """Args:
        directory: Where the daily files go (created 0700 on the first write).
        scrub: Redacts secrets in the messages and the answer.
        keep_days: Days of files kept; 0 keeps all.
        """
        self.directory = directory
        self.scrub = scrub
        self.keep_days = keep_days
        self._lock = threading.Lock()
        self._pruned_day = ""

    def record(self, served: Served) -> dict[str, Any]:
        """Scrub `served` and append it as one line; returns the line as written."""
        messages, answer = self.scrub(served.messages, served.answer)
        doc = {**asdict(served), "messages": messages, "answer": answer}
        doc["prompt_key"] = prompt_key(messages)
        day = datetime.fromtimestamp(served.time, UTC).strftime("%Y-%m-%d")
        data = (json.dumps(doc, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(
                self.directory / f"{day}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600
            )
            try:
                written = os.write(fd, data)
            finally:
                os.close(fd)
            if written != len(data):  # a full disk: the torn line is skipped on reading
                raise OSError(f"conversation log: wrote {written} of {len(data)} bytes")
            if day != self._pruned_day:
                self._pruned_day = day
                self.prune()
        return doc

    def files(self) -> list[Path]:
        """The daily files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if DAY_FILE.match(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def entries(self, first_day: str = "") -> Iterator[dict[str, Any]]:
        """Logged completions, newest first, from files of `first_day` (YYYY-MM-DD) on.

        A torn or damaged line is skipped.
        """
        for path in self.files():
            if path.name < first_day:
                break
            try:
                lines = path.read_bytes().splitlines()
            except OSError:
                continue
            for raw in reversed(lines):
                try:
                    doc = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("id"), str):
                    yield doc

    def find(self, completion_id: str) -> dict[str, Any] | None:
        """The logged completion with this id, or None (never logged, or past `keep_days`)."""
        needle = json.dumps(completion_id).encode()
        for path in self.files():
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if needle not in data:  # most files do not hold it: skip parsing them
                continue
            for raw in data.splitlines():
                if needle in raw:
                    try:
                        doc = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(doc, dict) and doc.get("id") == completion_id:
                        return doc
        return None

    def same_prompt(self, key: str, since: float = 0.0) -> list[dict[str, Any]]:
        """Logged completions of the prompt with this `prompt_key` (its regenerations).

        Only files from the day before `since` on are read: regenerations follow their prompt
        closely, and a month of long conversations is not worth reading for each choice.
        """
        first = datetime.fromtimestamp(max(0.0, since - 86400), UTC).strftime("%Y-%m-%d")
        return [doc for doc in self.entries(first) if doc.get("prompt_key") == key]

    def prune(self, now: float | None = None) -> int:
        """Delete daily files older than `keep_days`; returns how many went."""
        if self.keep_days <= 0:
            return 0
        now = time.time() if now is None else now
        oldest = datetime.fromtimestamp(now - self.keep_days * 86400, UTC).strftime("%Y-%m-%d")
        removed = 0
        for path in self.files():
            match = DAY_FILE.match(path.name)
            if match and match.group(1) < oldest:
                path.unlink(missing_ok=True)
                removed += 1
        return removed


async def log_served(chat_log: ChatLog | None, served: Served) -> None:
    """Record `served` off the event loop; a failure is logged, never fails the answer."""
    if chat_log is None:
        return
    try:
        await asyncio.to_thread(chat_log.record, served)
    except Exception:  # the client still gets its answer; the log line is simply missing
        log.exception("could not log completion %s", served.id)
