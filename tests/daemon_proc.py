"""Waiting on a real daemon subprocess, for the tests that start one (`sam_brain.control.daemon`).

Ports come from `sam_brain.dev.demo.free_port`, which the demo uses for the same purpose.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any


def wait(
    check: Any, timeout: float, proc: subprocess.Popen[bytes], log: Path, poll: float = 0.3
) -> Any:
    """The first truthy `check()` within `timeout` s; fails with the daemon's log if it exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            out = check()
            if out:
                return out
        except OSError:
            pass
        time.sleep(poll)
    raise AssertionError(f"timed out; daemon log:\n{log.read_text()[-3000:]}")
