"""Atomic, resumable training checkpoints on disk, independent of the tensor library.

A checkpoint is a directory `checkpoint/step-NNNNNNNN-XXXXXX/` holding whatever tensor files the
backend writes plus `state.json` (step, data position, best loss...). It is built in a temporary
directory, renamed into place, and only then named in `checkpoint/LATEST` by an atomic
`os.replace`, so a crash at any moment leaves the previous checkpoint intact and readable; older
step directories are pruned afterwards. Single files (the best adapter, `LATEST`) go through
`sam_brain.fsutil`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam_brain.fsutil import fsync_path, write_text_atomic

LATEST = "LATEST"
STATE = "state.json"


def save_checkpoint(
    root: Path, step: int, state: dict[str, Any], write_tensors: Callable[[Path], None]
) -> Path:
    """Write a checkpoint for `step` under `root` and make it the latest.

    Args:
        root: The checkpoint directory (created if missing).
        step: Optimizer step the checkpoint belongs to (used in the directory name).
        state: JSON-serialisable run state, stored as `state.json`.
        write_tensors: Called with the new directory to write adapter/optimizer tensors into.

    Returns:
        The directory of the new checkpoint.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        write_tensors(tmp)
        (tmp / STATE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        for child in tmp.iterdir():
            fsync_path(child)
        # A unique name: re-saving the same step must never delete what LATEST points to.
        final = root / f"step-{step:08d}-{tmp.name[-6:]}"
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / LATEST, final.name + "\n")
    for old in root.iterdir():
        if old.name not in (final.name, LATEST) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(root: Path) -> tuple[Path, dict[str, Any]] | None:
    """The latest checkpoint's directory and state, or None when there is none."""
    latest = root / LATEST
    if not latest.exists():
        return None
    directory = root / latest.read_text(encoding="utf-8").strip()
    state_file = directory / STATE
    if not state_file.exists():
        return None
    state: dict[str, Any] = json.loads(state_file.read_text(encoding="utf-8"))
    return directory, state
