"""The adapter's way back from a Ray job: its files in the job's log, each checked on arrival.

The job (`send_files`) prints every file of the finished adapter but its checkpoint as a `file`
report (path, size, SHA-256) followed by `chunk` reports of base64 data, then one `files` report
with the count, all after the worker's `result`. The daemon (`Incoming`) gathers them from the
log stream; `files()` refuses a transfer that is incomplete or whose bytes do not match what the
job hashed, and `land_adapter` writes the files into the run folder at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_brain.errors import TrainingFailed
from sam_brain.protocols import TrainResult

CHUNK = 16 * 1024  # raw bytes per log line (Ray's log tail hands out ~20 000 characters at once)


def send_files(out: Path, emit: Callable[[str, dict[str, Any]], None]) -> int:
    """Report the adapter's files (all but the checkpoint) as `file` + `chunk` reports.

    `emit` is the worker's reporter (passed in: this module must not import the worker).
    """
    paths = sorted(
        p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] != "checkpoint"
    )
    for path in paths:
        blob = path.read_bytes()
        rel = str(path.relative_to(out))
        emit("file", {"path": rel, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
        for i in range(0, len(blob), CHUNK):
            emit("chunk", {"path": rel, "data": base64.b64encode(blob[i : i + CHUNK]).decode()})
    emit("files", {"count": len(paths)})
    return len(paths)


@dataclass
class Incoming:
    """What a job's log carries: reports for the run, the adapter's files, the rest for the log."""

    result: TrainResult | None = None
    error: str | None = None
    declared: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: dict[str, list[bytes]] = field(default_factory=dict)
    files_done: int = -1

    def take(self, kind: str, msg: dict[str, Any]) -> bool:
        """Keep a `file`, `chunk` or `files` report; False for any other kind."""
        if kind == "chunk":
            self.parts.setdefault(msg["path"], []).append(base64.b64decode(msg["data"]))
        elif kind == "file":
            self.declared[msg["path"]] = msg
            self.parts[msg["path"]] = []
        elif kind == "files":
            self.files_done = int(msg.get("count", 0))
        else:
            return False
        return True

    def files(self) -> dict[str, bytes]:
        """The adapter's files, each checked against the size and SHA-256 the job sent.

        Raises:
            TrainingFailed: A file is missing, short or corrupted, or the transfer is incomplete.
        """
        if self.files_done != len(self.declared) or not self.declared:
            raise TrainingFailed("the remote job's adapter did not arrive completely")
        out = {}
        for rel, meta in self.declared.items():
            blob = b"".join(self.parts.get(rel, []))
            digest = hashlib.sha256(blob).hexdigest()
            if len(blob) != meta["size"] or digest != meta["sha256"]:
                raise TrainingFailed(
                    f"adapter file {rel} arrived corrupted (sha256 {digest[:12]}, sent"
                    f" {str(meta['sha256'])[:12]})"
                )
            out[rel] = blob
        return out


def land_adapter(files: dict[str, bytes], out: Path) -> None:
    """Write the adapter's files into `out` at once (built aside, then renamed)."""
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out.parent))
    try:
        for rel, blob in files.items():
            path = tmp / rel
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                raise TrainingFailed(f"the remote job sent a file outside the adapter: {rel}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(blob)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
