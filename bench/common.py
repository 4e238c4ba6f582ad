"""Shared helpers for the benchmark scripts: timing, machine load, tables and test corpora.

Benchmarks compare our code with an anchor in one run and print a table plus a ratio; this module
holds what they share. `build_session_corpus` replicates the Claude Code transcripts under
../shared/fixtures (and `sam_brain.dev.examples` sessions) to a target size, giving every copy its own
session ids and uuids (so each copy is a distinct set of files) and optionally its own text (a
per-copy letter cipher, so deduplication keeps the copies). `secret_session` writes one
transcript that carries the shared secret-scanner positives. Nothing here writes outside the
directories it is given.
"""

from __future__ import annotations

import json
import os
import random
import re
import resource
import socket
import string
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SESSIONS = SHARED / "fixtures" / "claude-sessions"
SECRETS = SHARED / "fixtures" / "secrets"
MB = 1_000_000
T = TypeVar("T")

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_NAMESPACE = uuid.UUID("5b0164a1-ccfe-547e-8000-000000000000")
# Claude Code markers that curation reads; the text cipher must leave them readable.
_KEEP_TEXT = ("[Request interrupted", "Warmup", "Caveat:", "(no output)")
_KEEP_KEYS = {"type", "id", "tool_use_id", "name", "role", "model", "stop_reason", "signature"}
_TAG_OR_TEXT = re.compile(r"<[^<>]*>|[^<]+|<")


def machine_load() -> str:
    """`uptime`'s load averages and the CPU count, for the record of a run."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run `fn` once; return its result and the wall-clock seconds it took."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def cpu_seconds() -> float:
    """CPU time used so far by this process and by its children that have ended."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    """Print a Markdown table (so a run's output can be pasted into the docs as is)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def report_ratio(name: str, ratio: float, goal: str, met: bool) -> None:
    """Print the line the smoke test looks for: `ratio <name>: <x> (goal <goal>: met|missed)`."""
    print(f"\nratio {name}: {ratio:.2f} (goal {goal}: {'met' if met else 'missed'})")


@dataclass
class Corpus:
    """A replicated transcript corpus: its root, main plus subagent files, and total bytes."""

    root: Path
    files: list[Path]
    bytes: int
    copies: int


def _templates(workdir: Path, examples: int) -> list[tuple[str, bytes]]:
    """(relative path, content) of every fixture transcript and `examples` example sessions."""
    out = [
        (str(p.relative_to(SESSIONS)), p.read_bytes()) for p in sorted(SESSIONS.rglob("*.jsonl"))
    ]
    if examples:
        from sam_brain.dev.examples import write_example_sessions

        ex_root = workdir / "examples-template"
        write_example_sessions(ex_root, n_sessions=examples)
        out += [
            (f"examples/{p.relative_to(ex_root)}", p.read_bytes())
            for p in sorted(ex_root.rglob("*.jsonl"))
        ]
    if not out:
        raise SystemExit(f"no transcripts under {SESSIONS}: the ../shared fixtures are needed")
    return out


def _cipher(copy: int) -> dict[int, int]:
    """A letter substitution (lower and upper case alike) that differs for every copy."""
    letters = list(string.ascii_lowercase)
    random.Random(f"bench-copy-{copy}").shuffle(letters)
    table = str.maketrans(string.ascii_lowercase, "".join(letters))
    table |= str.maketrans(string.ascii_uppercase, "".join(letters).upper())
    return table


def _vary(value: Any, table: dict[int, int], key: str = "") -> Any:
    """Cipher the text inside a transcript `message`, leaving markup and markers intact."""
    if isinstance(value, dict):
        return {k: _vary(v, table, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_vary(v, table, key) for v in value]
    if not isinstance(value, str) or key in _KEEP_KEYS or value.startswith(_KEEP_TEXT):
        return value
    return _TAG_OR_TEXT.sub(
        lambda m: m.group() if m.group().startswith("<") else m.group().translate(table), value
    )


def _copy_bytes(data: bytes, copy: int, vary_text: bool, ids: dict[bytes, bytes]) -> bytes:
    data = _UUID.sub(partial(_copy_id, copy=copy, ids=ids), data)
    if not vary_text or copy == 0:
        return data
    table = _cipher(copy)
    lines = []
    for line in data.split(b"\n"):
        try:
            rec = json.loads(line)
        except ValueError:
            lines.append(line)  # malformed fixture lines stay malformed
            continue
        if isinstance(rec, dict) and isinstance(rec.get("message"), dict):
            rec["message"] = _vary(rec["message"], table)
        lines.append(json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode())
    return b"\n".join(lines)


def build_session_corpus(
    dest: Path,
    target_bytes: int,
    *,
    vary_text: bool = False,
    examples: int = 12,
    exclude: tuple[str, ...] = (),
) -> Corpus:
    """Replicate the fixture transcripts under `dest` until they hold `target_bytes`.

    Copy `k` goes to `dest/copy-<k>/` with every uuid (file names, session ids, line uuids)
    mapped through uuid5, so the sessions are distinct files with distinct sample ids.

    Args:
        dest: An empty or missing directory (a `~/.claude/projects` look-alike).
        target_bytes: Stop after the first copy that reaches this total.
        vary_text: Also cipher the message text of copies after the first, so that duplicate
            detection does not drop the copies' samples.
        examples: How many `sam_brain.dev.examples` sessions join the fixtures in each copy.
        exclude: Fixture paths (relative to the claude-sessions folder) to leave out.
    """
    dest.mkdir(parents=True, exist_ok=True)
    templates = [t for t in _templates(dest.parent, examples) if t[0] not in exclude]
    files: list[Path] = []
    total = copy = 0
    while total < target_bytes:
        ids: dict[bytes, bytes] = {}
        for rel, data in templates:
            name = _UUID.sub(partial(_copy_id, copy=copy, ids=ids), rel.encode()).decode()
            out = dest / f"copy-{copy:04d}" / name
            out.parent.mkdir(parents=True, exist_ok=True)
            body = _copy_bytes(data, copy, vary_text, ids)
            out.write_bytes(body)
            files.append(out)
            total += len(body)
        copy += 1
    return Corpus(dest, files, total, copy)


def _copy_id(m: re.Match[bytes], copy: int, ids: dict[bytes, bytes]) -> bytes:
    old = m.group()
    if old not in ids:
        ids[old] = str(uuid.uuid5(_NAMESPACE, f"{copy}:{old.decode()}")).encode()
    return ids[old]


def secret_texts() -> list[dict[str, Any]]:
    """Every positive row of ../shared/fixtures/secrets, its text decoded into `text`."""
    import base64

    path = SECRETS / "positives.b64.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r | {"text": base64.b64decode(r["text_b64"]).decode("utf-8")} for r in rows]


def secret_session(dest: Path, texts: list[str], session_id: str) -> Path:
    """A transcript whose turns carry `texts`: as user prompts and as Bash tool output in turn.

    Each text sits in its own exchange (prompt, tool call, tool result, answer), so every
    extractor that keeps user text and tool output keeps it.
    """
    lines: list[dict[str, Any]] = []
    parent: str | None = None
    base = {"isSidechain": False, "userType": "external", "cwd": "/home/dev/demo"}
    base |= {"sessionId": session_id, "version": "2.1.39", "gitBranch": "main"}

    def add(kind: str, message: dict[str, Any], **extra: Any) -> None:
        nonlocal parent
        uid = str(uuid.uuid5(_NAMESPACE, f"{session_id}:{len(lines)}"))
        ts = f"2026-03-02T09:{len(lines) // 60 % 60:02d}:{len(lines) % 60:02d}.000Z"
        rec = base | {"type": kind, "parentUuid": parent, "uuid": uid, "timestamp": ts}
        lines.append(rec | {"message": message} | extra)
        parent = uid

    for i, text in enumerate(texts):
        tool_id = f"toolu_{i:024d}"
        prompt = f"Please check this config snippet and tell me what it does:\n{text}"
        add(
            "user",
            {"role": "user", "content": prompt}
            if i % 2 == 0
            else {"role": "user", "content": "Show me the deployment settings file."},
        )
        call = {
            "type": "tool_use",
            "id": tool_id,
            "name": "Bash",
            "input": {"command": "cat settings.env", "description": "Show settings"},
        }
        add(
            "assistant",
            {
                "role": "assistant",
                "id": f"msg_{i:06d}",
                "model": "claude-sonnet-4-5",
                "content": [{"type": "text", "text": "Let me look at the file."}, call],
            },
        )
        output = text if i % 2 == 1 else "FEATURE_FLAGS=on\nLOG_LEVEL=info"
        add(
            "user",
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output}],
            },
        )
        add("assistant", {"role": "assistant", "id": f"msg_{i:06d}b", "model": "claude-sonnet-4-5",
                          "content": [{"type": "text", "text": "It sets the service's credentials "
                                       "and options; keep that file out of version control."}]})  # fmt: skip
    path = dest / f"{session_id}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def temp_dir(prefix: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary directory under $TMPDIR that is removed when the benchmark ends."""
    return tempfile.TemporaryDirectory(prefix=f"sam-bench-{prefix}-")


def plain_strings(value: Any) -> list[str]:
    """Every string inside a JSON value, unescaped (secrets are compared as plain text)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    return []


def find_all(text: str, needle: str) -> list[int]:
    """Every index at which `needle` starts in `text` (overlaps included)."""
    out, at = [], text.find(needle)
    while at >= 0:
        out.append(at)
        at = text.find(needle, at + 1)
    return out


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait until `proc` accepts connections on 127.0.0.1:`port`; exit if it dies or times out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("daemon did not start listening in time")


def write_ingest_config(home: Path, sessions: Path, port: int, quiet_minutes: float) -> Path:
    """A daemon config for the ingest benches: one sessions folder, no training, no chat."""
    text = f"""data_dir = "{home / "data"}"
log_level = "INFO"
[api]
port = {port}
[sources]
sessions_dirs = ["{sessions}"]
quiet_minutes = {quiet_minutes}
archive_transcripts = false
[training]
min_for_training = 1000000000
check_interval_seconds = 3600
[deployment]
serve_chat = false
"""
    path = home / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path
