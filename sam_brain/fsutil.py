"""Atomic file writes: readers see the old content or the new, never a mix, even after a kill.

Every writer in SAM Brain that replaces a file goes through `atomic_file`: a temporary file in the
same folder, fsynced, renamed over the target, then the folder fsynced so the rename survives a
power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; it replaces `path` only if the block succeeds.

    The temporary name is `<name><random>.tmp<suffix>`: it keeps `path`'s suffix because some
    writers (mlx's `save_safetensors`) append their own extension otherwise.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=path.name, suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl_atomic(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Replace a JSONL file atomically with `records`; returns the line count."""
    n = 0
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename inside it durable)."""
    with contextlib.suppress(OSError):  # some filesystems refuse to open or fsync a folder
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def check_output_file(path: Path) -> None:
    """Raise BadRequest, in one line, when `path` cannot be written as a file (checked first,
    so a refused write leaves nothing behind)."""
    if path.is_dir():
        raise BadRequest(f"{path} is a folder; give a file name, e.g. {path / 'samples.jsonl'}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise BadRequest(f"cannot write {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadRequest(f"cannot write {path}: no permission to write in {parent}")
