"""Sources made for a test: real git repositories built with the git CLI, edited transcripts,
learnable pool rows."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sam_brain.pool import file_lock
from sam_brain.protocols import Sample, stable_id

if TYPE_CHECKING:
    from sam_brain.home import Home

COLOURS = ["red", "green", "blue", "amber", "violet", "teal", "black", "white"]


def git(repo: Path, *args: str, author: str = "Dev", email: str = "dev@example.com") -> str:
    """Run git in `repo` with no user or system config, so the host's settings cannot leak in."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": author,
        "GIT_AUTHOR_EMAIL": email,
        "GIT_COMMITTER_NAME": author,
        "GIT_COMMITTER_EMAIL": email,
    }
    out = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return out.stdout.decode()


def make_repo(path: Path, commits: int, change: Callable[[Path, int], str]) -> Path:
    """A new repo at `path` with `commits` commits; `change(path, i)` edits files, returns the message."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for i in range(commits):
        message = change(path, i)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", message)
    return path


def mark_first_prompt(path: Path, text: str) -> None:
    """Append `text` to the first user prompt of a transcript, in place."""
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        rec = json.loads(line)
        msg = rec.get("message") or {}
        if rec.get("type") == "user" and isinstance(msg.get("content"), str):
            msg["content"] += text
            lines[i] = json.dumps(rec)
            break
    path.write_text("\n".join(lines) + "\n")


def fill(home: Home, start: int, stop: int, groups: int = 4) -> None:
    """Learnable colour rows (box i is colour i % 8), in `groups` sessions."""
    rows = []
    for i in range(start, stop):
        g = f"g{i % groups}"
        messages = [
            {"role": "user", "content": f"What colour is box {i}?"},
            {"role": "assistant", "content": f"Box {i} is {COLOURS[i % 8]}."},
        ]
        sample = Sample(
            id=stable_id("t", str(i)), source="sessions", source_key=g, group=g, messages=messages
        )
        rows.append((sample, "train"))
    with file_lock(home.pool.lock_path):
        home.pool.upsert(rows)
