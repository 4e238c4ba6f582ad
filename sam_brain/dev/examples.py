"""Write example Claude Code transcripts in the real 2.1.x on-disk format, for demos and tests.

Sessions are generated deterministically from a seed: conversations about small coding tasks in a
made-up Python project, whose topics `sam_brain.dev.example_topics` builds from the templates in
`data/example_templates.txt` (task x module x function x wording) so that sessions differ. The
format follows real 2.1.39 files: one content block per assistant line sharing
`message.id`/`requestId`, `progress` hook lines inside the `parentUuid` chain,
`file-history-snapshot` lines, tool results with `toolUseResult`, a thinking block, parallel tool
calls that fork the tree, `turn_duration` system lines and, when asked, a `Task` subagent with its
nested `<session>/subagents/agent-<id>.jsonl` file. No secrets and no real personal data.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sam_brain.dev.example_topics import (
    FUNC_FORMS,
    KINDS,
    MODULES,
    SLUG_WORDS,
    SOURCE,
    TEMPLATES,
    Call,
    Line,
    Topic,
    plan_topics,
)

__all__ = [
    "AGENT_MODEL",
    "B62",
    "DEFAULT_CWD",
    "DEFAULT_START",
    "FUNC_FORMS",
    "HOOKS",
    "KINDS",
    "MODEL",
    "MODULES",
    "SLUG_WORDS",
    "SOURCE",
    "TEMPLATES",
    "VERSION",
    "Call",
    "ExampleSession",
    "Line",
    "Topic",
    "example_session",
    "example_session_lines",
    "write_example_sessions",
]

VERSION = "2.1.39"
MODEL = "claude-opus-4-6"
AGENT_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_CWD = "/home/dev/demo-project"
DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
HOOKS = {"Bash": "./scripts/guard.sh", "Edit": "ruff format", "Write": "./scripts/guard.sh"}


@dataclass
class ExampleSession:
    """One generated session: its id, main-file lines and subagent files by agent id."""

    session_id: str
    lines: list[Line]
    subagents: dict[str, list[Line]] = field(default_factory=dict)


class _Writer:
    """Appends transcript lines, keeping the `parentUuid` cursor, the clock and shared fields."""

    def __init__(self, rng: random.Random, base: Line, slug: str, start: datetime) -> None:
        self.rng, self.clock, self.base, self.slug = rng, start, dict(base), slug
        self.side: bool = base["isSidechain"]
        self.prompted = False  # real files add `slug` only after the first prompt
        self.lines: list[Line] = []
        self.cursor: str | None = None
        self.tracked: dict[str, Line] = {}
        self.subagents: dict[str, list[Line]] = {}

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rid(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choice(B62) for _ in range(n))

    def tick(self, lo: float, hi: float) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(int(lo * 1000), int(hi * 1000)))
        return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def chained(self, kind: str, parent: str | None, **fields: Any) -> Line:
        line: Line = {"parentUuid": parent, **self.base}
        line.update({"slug": self.slug} if self.prompted else {}, type=kind, **fields)
        if "uuid" not in line:
            line["uuid"] = self.uid()
        if "timestamp" not in line:
            line["timestamp"] = self.tick(0.01, 0.2)
        self.lines.append(line)
        return line

    def hook(self, parent: str | None, event: str, name: str, tool_id: str) -> Line:
        command = HOOKS.get(name, "callback") if event != "Stop" else "~/.claude/hooks/notify.sh"
        hook = f"{event}:{name}" if name else event
        data = {"type": "hook_progress", "hookEvent": event, "hookName": hook, "command": command}
        return self.chained(
            "progress", parent, data=data, parentToolUseID=tool_id, toolUseID=tool_id
        )

    def snapshot(self, message_id: str, update: bool, snap_id: str, snap_time: str) -> None:
        tracked = json.loads(json.dumps(self.tracked))
        snap = {"messageId": snap_id, "trackedFileBackups": tracked, "timestamp": snap_time}
        line = {"type": "file-history-snapshot", "messageId": message_id, "snapshot": snap}
        self.lines.append(line | {"isSnapshotUpdate": update})

    def usage(self) -> Line:
        made = self.rng.randint(200, 9000)
        return {
            "input_tokens": self.rng.randint(1, 9),
            "cache_creation_input_tokens": made,
            "cache_read_input_tokens": self.rng.randint(9000, 60000),
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": made},
            "output_tokens": self.rng.randint(1, 400),
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def assistant(self, blocks: list[Line], model: str = MODEL) -> list[Line]:
        """One API message: one line per block, all sharing message.id, requestId and usage."""
        msg: Line = {"model": model, "id": self.rid("msg_01", 22), "type": "message"}
        msg["role"] = "assistant"
        msg |= {"stop_reason": None, "stop_sequence": None, "usage": self.usage()}
        req, out = self.rid("req_011C", 18), []
        for block in blocks:
            message = msg | {"content": [block]}
            line = self.chained("assistant", self.cursor, message=message, requestId=req)
            line["timestamp"] = self.tick(0.4, 3.5)
            out.append(line)
            self.cursor = line["uuid"]
            if block["type"] == "tool_use" and block["name"] in HOOKS and not self.side:
                hook = self.hook(line["uuid"], "PreToolUse", block["name"], block["id"])
                self.cursor = hook["uuid"]
        return out

    def tool_result(self, call: Call, use: Line) -> Line:
        block = {"tool_use_id": use["message"]["content"][0]["id"], "type": "tool_result"}
        block |= {"content": call.content} | ({"is_error": True} if call.is_error else {})
        fields = {"message": {"role": "user", "content": [block]}, "uuid": self.uid()}
        fields |= {"timestamp": self.tick(0.2, 2.5), "toolUseResult": call.result}
        return self.chained("user", use["uuid"], **fields, sourceToolAssistantUUID=use["uuid"])

    def rounds(self, topic: Topic, prompt_id: str, snap_time: str) -> None:
        for i, (text, calls) in enumerate(topic.rounds):
            blocks: list[Line] = []
            if i == 0 and topic.thinking:
                # Real 2.1.x messages with thinking open with a bare "\n\n" text block.
                thinking = {"type": "thinking", "thinking": topic.thinking, "signature": "EXAMPLE"}
                blocks += [{"type": "text", "text": "\n\n"}, thinking]
            blocks += [{"type": "text", "text": text}] if text else []
            for call in calls:
                use = {"type": "tool_use", "id": self.rid("toolu_01", 22), "name": call.name}
                blocks.append(use | {"input": call.input, "caller": {"type": "direct"}})
            uses = self.assistant(blocks, AGENT_MODEL if self.side else MODEL)
            self._results(calls, uses[len(uses) - len(calls) :], prompt_id, snap_time)

    def _results(self, calls: list[Call], uses: list[Line], prompt: str, snap: str) -> None:
        """Each result hangs off its own tool_use line; the chain goes on from the last one."""
        for call, use in zip(calls, uses, strict=True):
            path, tool_id = call.input.get("file_path", ""), use["message"]["content"][0]["id"]
            rel = path.removeprefix(self.base["cwd"] + "/")
            if call.name in ("Edit", "Write") and rel not in self.tracked:
                name = f"{hashlib.sha256(rel.encode()).hexdigest()[:16]}@v1"
                backup = {"backupFileName": None if call.name == "Write" else name, "version": 1}
                self.tracked[rel] = backup | {"backupTime": self.tick(0.01, 0.1)}
                self.snapshot(use["uuid"], True, prompt, snap)
            if call.name in ("Read", "Grep", "Edit") and not self.side:
                self.hook(use["uuid"], "PostToolUse", call.name, tool_id)
            if call.subagent is not None:
                self._subagent(call, use)
            self.cursor = self.tool_result(call, use)["uuid"]

    def _subagent(self, call: Call, use: Line) -> None:
        """Write the agent's own file and mirror its lines as agent_progress in the main file."""
        assert call.subagent is not None
        agent_id = "a" + "".join(self.rng.choice("0123456789abcdef") for _ in range(6))
        side_base = self.base | {"isSidechain": True, "agentId": agent_id}
        side = _Writer(self.rng, side_base, self.slug, self.clock)
        side.prompted = True  # every line of an agent file carries the slug
        prompt, task_id = call.input["prompt"], use["message"]["content"][0]["id"]
        first = side.chained("user", None, message={"role": "user", "content": prompt})
        side.cursor = first["uuid"]
        side.rounds(call.subagent, "", "")
        side.assistant([{"type": "text", "text": call.subagent.answer}], AGENT_MODEL)
        self.subagents[agent_id] = side.lines
        parent, ref = use["uuid"], "agent_msg_" + self.rid("01", 22)
        for x in side.lines:
            keys = ("type", "message", "requestId", "uuid", "timestamp")
            data = {"message": {k: x[k] for k in keys if k in x}, "normalizedMessages": []}
            data |= {"type": "agent_progress", "prompt": prompt, "agentId": agent_id}
            line = self.chained("progress", parent, data=data, toolUseID=ref)
            line |= {"parentToolUseID": task_id, "timestamp": x["timestamp"]}
            parent = line["uuid"]
        ms = int((side.clock - self.clock).total_seconds() * 1000)
        tokens, tools = self.rng.randint(8000, 40000), sum(len(c) for _, c in call.subagent.rounds)
        self.clock = side.clock
        trailer = f"agentId: {agent_id} (for resuming to continue this agent's work if needed)\n"
        trailer += f"<usage>total_tokens: {tokens}\ntool_uses: {tools}\nduration_ms: {ms}</usage>"
        answer = [{"type": "text", "text": call.subagent.answer}]
        call.content = [*answer, {"type": "text", "text": trailer}]
        call.result = {"status": "completed", "prompt": prompt, "agentId": agent_id}
        call.result |= {"content": answer, "totalDurationMs": ms, "totalTokens": tokens}
        call.result |= {"totalToolUseCount": tools, "usage": self.usage()}

    def turn(self, topic: Topic, is_last: bool) -> None:
        prompt_id, snap_time = self.uid(), self.tick(20, 240)
        self.snapshot(prompt_id, False, prompt_id, snap_time)
        fields: Line = {"message": {"role": "user", "content": topic.prompt}, "uuid": prompt_id}
        fields |= {
            "timestamp": self.tick(0.02, 0.1),
            "thinkingMetadata": {"maxThinkingTokens": 31999},
        }
        self.chained("user", self.cursor, **fields, todos=[], permissionMode="acceptEdits")
        self.cursor, self.prompted = prompt_id, True
        self.rounds(topic, prompt_id, snap_time)
        final = self.assistant([{"type": "text", "text": topic.answer}])[-1]
        if is_last or self.rng.random() < 0.3:
            stop = self.hook(final["uuid"], "Stop", "", self.uid())
            ms = int((self.clock - datetime.fromisoformat(snap_time)).total_seconds() * 1000)
            done = self.chained("system", stop["uuid"], subtype="turn_duration", durationMs=ms)
            self.cursor, done["isMeta"] = done["uuid"], False


def example_session(
    seed: int | str,
    *,
    cwd: str = DEFAULT_CWD,
    start: datetime | None = None,
    with_subagent: bool = False,
) -> ExampleSession:
    """Generate one example session (main-file lines plus any subagent files).

    Args:
        seed: Any int or str; the same seed (and arguments) always gives the same session.
        cwd: Working directory recorded on every line.
        start: Time of the first line (UTC); defaults to 2026-03-02 09:00.
        with_subagent: Make the second turn a `Task` call whose agent writes its own file.

    Returns:
        The session id, its lines in file order, and subagent lines keyed by agent id.
    """
    rng = random.Random(f"sam-brain-example:{seed}")
    session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    branch = rng.choice(("main", "main", "fix/edge-cases", "feature/cleanup"))
    topics = plan_topics(rng, cwd, branch, with_subagent)
    base = {"isSidechain": False, "userType": "external", "cwd": cwd, "sessionId": session_id}
    base |= {"version": VERSION, "gitBranch": branch}
    writer = _Writer(rng, base, "-".join(rng.sample(SLUG_WORDS.split(), 3)), start or DEFAULT_START)
    hook_id = writer.uid()
    first = writer.hook(None, "SessionStart", "startup", hook_id)
    writer.cursor = writer.hook(first["uuid"], "SessionStart", "startup", hook_id)["uuid"]
    for i, topic in enumerate(topics):
        writer.turn(topic, is_last=i == len(topics) - 1)
    return ExampleSession(session_id, writer.lines, writer.subagents)


def example_session_lines(seed: int | str, **kwargs: Any) -> list[Line]:
    """The main-file lines of `example_session(seed, **kwargs)`."""
    return example_session(seed, **kwargs).lines


def write_example_sessions(
    root: Path,
    *,
    n_sessions: int = 12,
    project: str = "-home-dev-demo-project",
    seed: int = 0,
    start: datetime | None = None,
    cwd: str = DEFAULT_CWD,
) -> list[Path]:
    """Write `n_sessions` example transcripts as `<root>/<project>/<sessionId>.jsonl`.

    Session 1 (and every fifth after it) calls a subagent, whose file goes to
    `<root>/<project>/<sessionId>/subagents/agent-<id>.jsonl`. Sessions start 5 hours apart.

    Args:
        root: A `~/.claude/projects`-like directory.
        n_sessions: How many sessions to write.
        project: The encoded-cwd directory name.
        seed: Base seed; session i uses `f"{seed}:{i}"`.
        start: Start time of the first session (UTC).
        cwd: Working directory recorded in the lines.

    Returns:
        The main session files, in session order.
    """
    out_dir, begin, paths = root / project, start or DEFAULT_START, []
    for i in range(n_sessions):
        when = begin + timedelta(hours=5 * i)
        session = example_session(f"{seed}:{i}", cwd=cwd, start=when, with_subagent=i % 5 == 1)
        # Subagents first, then the main file: a watcher never sees a session without them.
        for agent_id, lines in session.subagents.items():
            _write_jsonl(
                out_dir / session.session_id / "subagents" / f"agent-{agent_id}.jsonl", lines
            )
        paths.append(out_dir / f"{session.session_id}.jsonl")
        _write_jsonl(paths[-1], session.lines)
    return paths


def _write_jsonl(path: Path, lines: list[Line]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines)
    # Whole files only (a watched folder would otherwise see an empty or partial transcript).
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
