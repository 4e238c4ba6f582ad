"""Write example Claude Code transcripts in the real 2.1.x on-disk format, for demos and tests.

Sessions are generated deterministically from a seed: plausible conversations about small coding
tasks in a made-up Python project, combined from templates (task kind x module x function x wording)
so that sessions differ. The format follows real 2.1.39 files: one content block per assistant
line sharing `message.id`/`requestId`, `progress` hook lines inside the `parentUuid` chain,
`file-history-snapshot` lines, tool results with `toolUseResult`, a thinking block, parallel tool
calls that fork the tree, a `turn_duration` system line and, when asked, a `Task` subagent with
its nested `<session>/subagents/agent-<id>.jsonl` file. No secrets and no real personal data.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any


VERSION = "2.1.39"
MODEL = "claude-opus-4-6"
AGENT_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_CWD = "/home/dev/demo-project"
DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SLUG_WORDS = (
    "humble", "quiet", "brisk", "lucky", "mellow", "tidy", "nimble", "sunny", "gentle", "witty",
    "dancing", "drifting", "humming", "sorting", "folding", "weaving", "baking", "sketching",
    "otter", "heron", "maple", "comet", "pebble", "lantern", "walrus", "meadow", "falcon", "tulip",
)  # fmt: skip
PRE_HOOKS = {"Bash": "./scripts/guard.sh", "Edit": "./scripts/guard.sh", "Write": "./scripts/guard.sh"}
POST_HOOKS = {"Read": "callback", "Glob": "callback", "Grep": "callback", "Edit": "ruff format"}


# ---- content: a made-up project and templated tasks --------------------------------------------

@dataclass
class Call:
    """One tool call: its input, the tool_result content and the structured `toolUseResult`."""

    name: str
    input: dict[str, Any]
    content: Any
    result: Any
    is_error: bool = False
    subagent: Topic | None = None


@dataclass
class Topic:
    """One user turn: prompt, rounds of (text, tool calls), final answer, optional thinking."""

    prompt: str
    rounds: list[tuple[str, list[Call]]]
    answer: str
    thinking: str = ""


#TOPICS#


# ---- format: lines, chain, ids and clock ------------------------------------------------------


@dataclass
class ExampleSession:
    """One generated session: its id, main-file lines and subagent files by agent id."""

    session_id: str
    lines: list[dict[str, Any]]
    subagents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Writer:
    """Appends transcript lines, keeping the `parentUuid` cursor, clock and shared fields."""

    def __init__(
        self, rng: random.Random, session_id: str, cwd: str, branch: str, slug: str, start: datetime
    ) -> None:
        self.rng, self.clock = rng, start
        self.base: dict[str, Any] = {
            "isSidechain": False,
            "userType": "external",
            "cwd": cwd,
            "sessionId": session_id,
            "version": VERSION,
            "gitBranch": branch,
        }
        self.slug = slug
        self.lines: list[dict[str, Any]] = []
        self.cursor: str | None = None
        self.tracked: dict[str, dict[str, Any]] = {}
        self.subagents: dict[str, list[dict[str, Any]]] = {}

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rid(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choice(B62) for _ in range(n))

    def tick(self, lo: float, hi: float) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(int(lo * 1000), int(hi * 1000)))
        return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def chained(self, kind: str, parent: str | None, **fields: Any) -> dict[str, Any]:
        line: dict[str, Any] = {"parentUuid": parent, **self.base}
        if self.slug and self.lines and any(x.get("type") == "user" for x in self.lines):
            line["slug"] = self.slug
        line["type"] = kind
        line.update(fields)
        line.setdefault("uuid", self.uid())
        line.setdefault("timestamp", self.tick(0.01, 0.2))
        self.lines.append(line)
        return line

    def progress(self, parent: str, event: str, hook: str, tool_id: str) -> dict[str, Any]:
        data = {"type": "hook_progress", "hookEvent": event, "hookName": hook, "command": ""}
        data["command"] = {"SessionStart": "~/.claude/hooks/notify.sh start", "Stop": "~/.claude/hooks/notify.sh done"}.get(
            event, PRE_HOOKS.get(hook.split(":")[-1], "callback") if event == "PreToolUse" else POST_HOOKS.get(hook.split(":")[-1], "callback")
        )  # fmt: skip
        return self.chained("progress", parent, data=data, parentToolUseID=tool_id, toolUseID=tool_id)

    def session_start(self) -> None:
        hook_id = self.uid()
        first = self.progress(None, "SessionStart", "SessionStart:startup", hook_id)  # type: ignore[arg-type]
        second = self.progress(first["uuid"], "SessionStart", "SessionStart:startup", hook_id)
        self.cursor = second["uuid"]

    def snapshot(self, message_id: str, update: bool, snap_id: str, snap_time: str) -> None:
        self.lines.append(
            {
                "type": "file-history-snapshot",
                "messageId": message_id,
                "snapshot": {
                    "messageId": snap_id,
                    "trackedFileBackups": json.loads(json.dumps(self.tracked)),
                    "timestamp": snap_time,
                },
                "isSnapshotUpdate": update,
            }
        )

    def usage(self) -> dict[str, Any]:
        created = self.rng.randint(200, 9000)
        return {
            "input_tokens": self.rng.randint(1, 9),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": self.rng.randint(9000, 60000),
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": created},
            "output_tokens": self.rng.randint(1, 400),
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def assistant(self, blocks: list[dict[str, Any]], model: str = MODEL) -> list[dict[str, Any]]:
        """One API message: one line per block, all sharing message.id, requestId and usage."""
        msg_id, req_id, usage = self.rid("msg_01", 22), self.rid("req_011C", 18), self.usage()
        out = []
        for block in blocks:
            message = {
                "model": model,
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "content": [block],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            }
            line = self.chained(
                "assistant", self.cursor, message=message, requestId=req_id, timestamp=self.tick(0.4, 3.5)
            )
            out.append(line)
            self.cursor = line["uuid"]
            if block["type"] == "tool_use" and block["name"] in PRE_HOOKS:
                hook = f"PreToolUse:{block['name']}"
                self.cursor = self.progress(line["uuid"], "PreToolUse", hook, block["id"])["uuid"]
        return out

    def tool_result(self, call: Call, use_line: dict[str, Any]) -> dict[str, Any]:
        block: dict[str, Any] = {"tool_use_id": use_line["message"]["content"][0]["id"]}
        block.update({"type": "tool_result", "content": call.content})
        if call.is_error:
            block["is_error"] = True
        return self.chained(
            "user",
            use_line["uuid"],
            message={"role": "user", "content": [block]},
            timestamp=self.tick(0.2, 2.5),
            toolUseResult=call.result,
            sourceToolAssistantUUID=use_line["uuid"],
        )

    def turn(self, topic: Topic, is_last: bool) -> None:
        prompt_id = self.uid()
        snap_time = self.tick(20, 240)
        self.snapshot(prompt_id, False, prompt_id, snap_time)
        self.chained(
            "user",
            self.cursor,
            message={"role": "user", "content": topic.prompt},
            uuid=prompt_id,
            timestamp=self.tick(0.02, 0.1),
            thinkingMetadata={"maxThinkingTokens": 31999},
            todos=[],
            permissionMode="acceptEdits",
        )
        self.cursor = prompt_id
        for i, (text, calls) in enumerate(topic.rounds):
            blocks: list[dict[str, Any]] = []
            if i == 0 and topic.thinking:
                # Real 2.1.x messages with thinking open with a bare "\n\n" text block.
                blocks += [{"type": "text", "text": "\n\n"}, {"type": "thinking", "thinking": topic.thinking, "signature": "EXAMPLE_SIGNATURE"}]  # fmt: skip
            if text:
                blocks.append({"type": "text", "text": text})
            for call in calls:
                use = {"type": "tool_use", "id": self.rid("toolu_01", 22), "name": call.name}
                blocks.append({**use, "input": call.input, "caller": {"type": "direct"}})
            lines = self.assistant(blocks)[-len(calls) :] if calls else []
            self._results(calls, lines, prompt_id, snap_time)
        final = self.assistant([{"type": "text", "text": topic.answer}])[-1]
        if is_last or self.rng.random() < 0.3:
            stop = self.progress(final["uuid"], "Stop", "Stop", self.uid())
            ms = int((self.clock - datetime.fromisoformat(snap_time)).total_seconds() * 1000)
            done = self.chained("system", stop["uuid"], subtype="turn_duration", durationMs=ms, isMeta=False)
            self.cursor = done["uuid"]

    def _results(self, calls: list[Call], uses: list[dict[str, Any]], prompt_id: str, snap: str) -> None:
        """Results hang off their own tool_use line; the chain continues from the last one."""
        last = self.cursor
        for call, use in zip(calls, uses, strict=True):
            path = call.input.get("file_path")
            if call.name in ("Edit", "Write") and isinstance(path, str) and path not in self.tracked:
                rel = path.split("/demo-project/")[-1]
                name = None if call.name == "Write" else f"{abs(hash(rel)) % 16**16:016x}@v1"
                self.tracked[rel] = {"backupFileName": name, "version": 1, "backupTime": self.tick(0.01, 0.1)}
                self.snapshot(use["uuid"], True, prompt_id, snap)
            if call.name in POST_HOOKS and not call.is_error:
                self.progress(use["uuid"], "PostToolUse", f"PostToolUse:{call.name}", use["message"]["content"][0]["id"])
            if call.subagent is not None:
                call.result["agentId"] = self._subagent(call, use)
            last = self.tool_result(call, use)["uuid"]
        self.cursor = last

    def _subagent(self, call: Call, use: dict[str, Any]) -> str:
        """Write the Task agent's own file and mirror its lines as agent_progress in the main file."""
        assert call.subagent is not None
        agent_id = "a" + "".join(self.rng.choice("0123456789abcdef") for _ in range(6))
        side = _Writer(self.rng, self.base["sessionId"], self.base["cwd"], self.base["gitBranch"], self.slug, self.clock)
        side.base.update(isSidechain=True, agentId=agent_id)
        side.lines = [{"type": "seed"}]  # so every side line carries the slug, as in real files
        side.chained("user", None, message={"role": "user", "content": call.input["prompt"]})
        side.cursor = side.lines[-1]["uuid"]
        for text, calls in call.subagent.rounds:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            blocks += [{"type": "tool_use", "id": side.rid("toolu_01", 22), "name": c.name, "input": c.input} for c in calls]
            uses = side.assistant(blocks, model=AGENT_MODEL)[-len(calls) :]
            for c, u in zip(calls, uses, strict=True):
                side.cursor = side.tool_result(c, u)["uuid"]
        side.assistant([{"type": "text", "text": call.subagent.answer}], model=AGENT_MODEL)
        side_lines = side.lines[1:]
        for line in side_lines:
            line.pop("sourceToolAssistantUUID", None)
        self.subagents[agent_id] = side_lines
        parent, msg_ref = use["uuid"], "agent_msg_" + self.rid("01", 22)
        for line in side_lines:
            copy = {k: line[k] for k in ("type", "message", "uuid", "timestamp")}
            if "requestId" in line:
                copy["requestId"] = line["requestId"]
            data = {"message": copy, "normalizedMessages": [], "type": "agent_progress", "prompt": call.input["prompt"], "agentId": agent_id}
            parent = self.chained("progress", parent, data=data, toolUseID=msg_ref, parentToolUseID=use["message"]["content"][0]["id"])["uuid"]  # fmt: skip
        self.clock = side.clock
        tokens, ms = self.rng.randint(8000, 40000), int((side.clock - self.clock).total_seconds() * 1000) + 4000
        call.content = [
            {"type": "text", "text": call.subagent.answer},
            {"type": "text", "text": f"agentId: {agent_id} (for resuming to continue this agent's work if needed)\n<usage>total_tokens: {tokens}\ntool_uses: {sum(len(c) for _, c in call.subagent.rounds)}\nduration_ms: {ms}</usage>"},
        ]  # fmt: skip
        call.result.update(
            status="completed",
            prompt=call.input["prompt"],
            content=[{"type": "text", "text": call.subagent.answer}],
            totalDurationMs=ms,
            totalTokens=tokens,
            totalToolUseCount=sum(len(c) for _, c in call.subagent.rounds),
            usage=self.usage(),
        )
        return agent_id


def example_session(
    seed: int | str,
    *,
    cwd: str = DEFAULT_CWD,
    start: datetime | None = None,
    with_subagent: bool = False,
) -> ExampleSession:
    """Generate one example session (main lines plus any subagent files).

    Args:
        seed: Anything `random.Random` accepts deterministically; the same seed gives the same session.
        cwd: Working directory recorded on every line.
        start: Time of the first line (UTC); defaults to 2026-03-02 09:00.
        with_subagent: Include a `Task` call whose agent writes its own file.

    Returns:
        The session id, its lines in file order, and subagent lines keyed by agent id.
    """
    rng = random.Random(f"sam-brain-example:{seed}")
    session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    topics = make_topic(rng, cwd, n_turns=rng.randint(2, 5), with_subagent=with_subagent)
    branch = rng.choice(["main", "main", f"fix/{topics[0].module}", f"feature/{topics[0].module}-cleanup"])
    slug = "-".join(rng.sample(SLUG_WORDS, 3))
    writer = _Writer(rng, session_id, cwd, branch, slug, start or DEFAULT_START)
    writer.session_start()
    for i, topic in enumerate(topics):
        writer.turn(topic, is_last=i == len(topics) - 1)
    return ExampleSession(session_id, writer.lines, writer.subagents)


def example_session_lines(seed: int | str, **kwargs: Any) -> list[dict[str, Any]]:
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

    The second session (and every fifth after it) calls a subagent, whose file goes to
    `<root>/<project>/<sessionId>/subagents/agent-<id>.jsonl`. Sessions start a few hours apart.

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
    base = start or DEFAULT_START
    out_dir = root / project
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_sessions):
        session = example_session(
            f"{seed}:{i}", cwd=cwd, start=base + timedelta(hours=5 * i), with_subagent=i % 5 == 1
        )
        path = out_dir / f"{session.session_id}.jsonl"
        _write_jsonl(path, session.lines)
        for agent_id, lines in session.subagents.items():
            _write_jsonl(out_dir / session.session_id / "subagents" / f"agent-{agent_id}.jsonl", lines)
        paths.append(path)
    return paths


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
