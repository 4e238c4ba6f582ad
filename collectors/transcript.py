"""Parse Claude Code transcript files (`~/.claude/projects/**.jsonl`) into threaded conversations.

A transcript is a tree, not a list: each line names its parent by `parentUuid`. This module takes
a file's lines, each decoded and turned into a turn by `transcript_lines` (bad lines are counted,
never fatal), rebuilds the tree through the metadata lines it drops (progress, attachment, system,
meta and command lines that are not context), stitches compaction via `logicalParentUuid`, keeps
the path to the newest leaf while re-attaching parallel tool-call forks (`transcript_tree`), places
user-side context (slash commands, `!` shell output, `@` files: `transcript_context`) on its
prompt, merges the one-block-per-line pieces of an API message into one assistant turn, pairs tool
calls with their results, and splits inline sidechain runs (1.0.x subagents) off the main line.
`collectors/sessions.py` attaches subagent files and links them to their Task/Agent calls.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from collectors.transcript_context import attach_before, place_context, user_content
from collectors.transcript_lines import (
    Line,
    ToolCall,
    Turn,
    attachment_turn,
    line_turn,
    read_lines,
)
from collectors.transcript_tree import Node, thread

SUBAGENT_TOOLS = ("Task", "Agent")


@dataclass
class Conversation:
    """A threaded transcript: the kept path of one session (or one subagent run) plus provenance.

    `skipped` counts every line or block left out, by reason (`type:progress`, `meta`, `bad_json`,
    `interrupt`, `image`, ...), so nothing is dropped silently. Subagents carry the id of the
    parent's Task/Agent tool call in `parent_tool_use_id` ("" when it could not be linked).
    """

    session_id: str
    path: Path
    cwd: str = ""
    git_branch: str = ""
    version: str = ""
    started: str = ""
    ended: str = ""
    turns: list[Turn] = field(default_factory=list)
    subagents: list[Conversation] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    # Work left out before curation, as `tool_calls:<reason>` / `assistant_turns:<reason>`
    # (abandoned rewind branches, dropped warm-up agents); see collectors/coverage.py.
    lost: Counter[str] = field(default_factory=Counter)
    interrupts: int = 0
    agent_id: str = ""
    parent_tool_use_id: str = ""
    task: ToolCall | None = None


# --------------------------------------------------------------------------------------------
# Threading


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


@dataclass
class _FileMeta:
    """What every conversation of one file shares.

    The most common session id (the file stem if none), and the first cwd and branch and the
    last version found on its user and assistant lines.
    """

    session_id: str
    cwd: str
    git_branch: str
    version: str
    agent_id: str  # the first `agentId` named by a line ("" when none)


def _nodes(
    path: Path, lines: Iterable[Line], skipped: Counter[str], subagent_file: bool
) -> tuple[dict[str, Node], dict[str, str | None], _FileMeta]:
    """The kept lines as tree nodes, the dropped ones as links, and the file's metadata.

    One pass over the lines; a link is a dropped line's parent by its uuid.
    """
    nodes: dict[str, Node] = {}
    links: dict[str, str | None] = {}
    sessions: dict[str, int] = {}
    # Session ids come in long runs (one per file, mostly): counted a run at a time.
    run_id: object = None
    run = 0
    cwd = branch = version = agent_id = ""
    agent_seen = False
    progress = 0
    for index, line in enumerate(lines):
        kind = line.type
        if line.session_id == run_id:
            run += 1
        else:
            _count_run(sessions, run_id, run)
            run_id, run = line.session_id, 1
        if not agent_seen and line.agent_id:
            agent_id, agent_seen = _str(line.agent_id), True
        turn: Turn | None = None
        if kind == "user" or kind == "assistant":
            cwd = cwd or line.cwd or ""
            branch = branch or line.git_branch or ""
            version = line.version or version
            message = line.message
            if message is None:
                skipped["bad_message"] += 1  # a malformed line must not claim its uuid
                continue
            turn = line_turn(line, message, skipped)
        elif (data := line.data) is not None and data.type == "agent_progress":
            skipped["agent_progress"] += 1
        elif kind == "progress":
            progress += 1  # half of all lines: counted once, below
        elif kind == "attachment" and (turn := attachment_turn(line, skipped)) is not None:
            pass  # an `@` file: context for the prompt (other attachments are links, below)
        else:
            skipped[f"type:{kind or 'missing'}"] += 1
        uuid = line.uuid
        if not uuid:
            if turn is None:
                continue  # unchained metadata (summary, snapshot, queue-operation)
            uuid = f"line-{index}"
        if uuid in nodes or uuid in links:
            skipped["duplicate_uuid"] += 1
            continue
        # A compact boundary stitches the pre-compaction history back on.
        parent = (
            line.logical_parent_uuid if line.subtype == "compact_boundary" else line.parent_uuid
        ) or None
        if turn is None:
            links[uuid] = parent
            continue
        sidechain = bool(line.is_sidechain) and not subagent_file
        nodes[uuid] = Node(uuid, parent, index, line.timestamp or "", sidechain, turn)
    _count_run(sessions, run_id, run)
    if progress:
        skipped["type:progress"] += progress
    # The most common session id; the first seen wins a tie (as Counter.most_common does).
    session = max(sessions, key=sessions.__getitem__) if sessions else path.stem
    return nodes, links, _FileMeta(session, cwd, branch, version, agent_id)


def _count_run(sessions: dict[str, int], session_id: object, run: int) -> None:
    """Count `run` lines naming `session_id`; a non-text id counts as "", a missing one not."""
    if session_id:
        key = session_id if isinstance(session_id, str) else ""
        sessions[key] = sessions.get(key, 0) + run


def _join(first: str, second: str) -> str:
    """Two texts joined by a blank line; an empty one adds nothing."""
    return f"{first}\n\n{second}" if first and second else first or second


def _merge(items: list[Turn], skipped: Counter[str]) -> tuple[list[Turn], int]:
    """Merge split API messages and consecutive results; pair results with calls.

    The items are the line turns `thread` returned; they are merged in place, not copied.
    """
    turns: list[Turn] = []
    # The assistant turn later lines of the same API message merge into, while only tool
    # results have come after it.
    open_id, open_turn, clean = "", None, False
    interrupts = 0
    trigger = ""
    pending: list[Turn] = []  # context turns not yet placed (see transcript_context)
    for item in items:
        role = item.role
        if role == "context":
            pending.append(item)
            continue
        if role == "interrupt" or role == "event":
            interrupts += role == "interrupt"
            trigger = "task-notification" if role == "event" else trigger
            open_id = ""  # an event starts a new assistant turn
            continue
        if role == "assistant":
            if pending:
                place_context(turns, pending)
                clean = clean and turns[-1].role != "user"  # a command became the prompt
            if open_turn is not None and clean and item.message_id and item.message_id == open_id:
                open_turn.text = _join(open_turn.text, item.text)
                open_turn.thinking = _join(open_turn.thinking, item.thinking)
                open_turn.tool_calls.extend(item.tool_calls)
                open_turn.uuids.extend(item.uuids)
                continue
            open_id, open_turn, clean = item.message_id, item, True
            item.trigger = trigger
            turns.append(item)
            trigger = ""
            continue
        if role == "user":
            trigger = ""
            clean = False
            if pending:
                attach_before(item, pending)
        last = turns[-1] if turns else None
        if last is not None and last.role == role:
            if last.context_after or item.context:  # two prompts in a row: one text, in order
                item.text, item.context = user_content(item), ""
                last.text, last.context_after = _join(last.text, last.context_after), ""
            last.results.extend(item.results)
            last.text = _join(last.text, item.text)
            last.uuids.extend(item.uuids)
            continue
        turns.append(item)
    if interrupts:
        skipped["interrupt"] += interrupts
    if pending:
        skipped["unplaced_context"] += len(pending)  # context at the end, with no turn after it
    return _pair(turns, skipped), interrupts


def _pair(turns: list[Turn], skipped: Counter[str]) -> list[Turn]:
    calls: dict[str, str] = {}
    order: dict[str, int] = {}
    answered: set[str] = set()
    for turn in turns:
        for call in turn.tool_calls:
            calls[call["id"]] = call["name"]
            order[call["id"]] = len(order)
        if not turn.results:
            continue
        paired = []
        for result in turn.results:
            tid = result["tool_use_id"]
            if tid in calls and tid not in answered:
                result["name"] = calls[tid]
                answered.add(tid)
                paired.append(result)
            else:
                skipped["unmatched_tool_result"] += 1
        if len(paired) > 1:
            paired.sort(key=lambda r: order[r["tool_use_id"]])
        turn.results = paired
    if unanswered := len(calls) - len(answered):
        skipped["unanswered_tool_call"] += unanswered
    return [t for t in turns if t.role != "tool" or t.results]


# --------------------------------------------------------------------------------------------
# Files


def _conversation(path: Path, meta: _FileMeta, turns: list[Turn]) -> Conversation:
    stamps = [t.timestamp for t in turns if t.timestamp]
    return Conversation(
        session_id=meta.session_id,
        path=path,
        cwd=meta.cwd,
        git_branch=meta.git_branch,
        version=meta.version,
        started=min(stamps, default=""),
        ended=max(stamps, default=""),
        turns=turns,
    )


def parse_file(path: Path, *, subagent: bool = False) -> Conversation:
    """Parse one file; inline sidechain runs (1.0.x) become unlinked `subagents`.

    Args:
        path: The transcript.
        subagent: The file is a subagent transcript, so `isSidechain` marks every line.
    """
    skipped: Counter[str] = Counter()
    lines = read_lines(path, skipped)
    nodes, links, meta = _nodes(path, lines, skipped, subagent_file=subagent)
    main_items: list[Turn] = []
    sidechains: list[list[Turn]] = []
    # Assistant lines off every kept path (rewound branches), counted before merging.
    calls = lines_with_work = 0
    for node in nodes.values():
        if node.turn.role == "assistant":
            calls += len(node.turn.tool_calls)
            lines_with_work += bool(node.turn.tool_calls)
    for root, items in thread(nodes, links, skipped):
        for item in items:
            if item.role == "assistant":
                calls -= len(item.tool_calls)
                lines_with_work -= bool(item.tool_calls)
        if root.sidechain:
            sidechains.append(items)
        else:
            main_items.extend(items)
    turns, interrupts = _merge(main_items, skipped)
    conv = _conversation(path, meta, turns)
    conv.skipped, conv.interrupts = skipped, interrupts
    if calls:
        conv.lost["tool_calls:abandoned_branch"] = calls
        conv.lost["assistant_turns:abandoned_branch"] = lines_with_work
    if subagent:
        conv.agent_id = meta.agent_id or path.stem.removeprefix("agent-")
    for items in sidechains:
        side = Counter[str]()
        side_turns, side_interrupts = _merge(items, side)
        sub = _conversation(path, meta, side_turns)
        sub.skipped, sub.interrupts = side, side_interrupts
        conv.subagents.append(sub)
    return conv
