"""Sessions collector: Claude Code transcripts on disk become scored chat samples.

It finds main transcripts under the configured directories (`**/*.jsonl`), attaches each one's
subagent files (flat `agent-*.jsonl` siblings in 2.0.x, `<session>/subagents/` in 2.1.x; a changed
subagent file re-extracts its parent), and tracks every file by identity and size in the cursor
`sessions:<path>`. A file that grew or was replaced is extracted again as a whole: its source key
(the main file's path) goes into `replace_keys`, and stable ids make the new samples replace the
old ones. Samples of a live session become trainable `quiet_minutes` after its last write. With
an archive directory, a gzip copy of every raw transcript is kept there under its relative path.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

from collectors.coverage import has_work
from collectors.curate import curate
from collectors.quality import QualityConfig
from collectors.session_filter import SessionFilter, peek_field
from collectors.transcript import SUBAGENT_TOOLS, Conversation, parse_file
from collectors.transcript_lines import ToolCall
from collectors.turn_windows import CurateOptions
from sam_brain.pipeline.archive import write_archive_copy
from sam_brain.pipeline.exclude import file_ident, skip_excluded
from sam_brain.pipeline.windowing import TokenCount, estimate_tokens
from sam_brain.protocols import CollectResult, Cursors

log = logging.getLogger(__name__)


def is_subagent_file(path: Path) -> bool:
    """True for subagent transcripts (`agent-*.jsonl`, flat or under `<session>/subagents/`)."""
    return path.name.startswith("agent-") or path.parent.name == "subagents"


def peek_session_id(path: Path) -> str:
    """The `sessionId` named by the first lines of a transcript ("" when none is found)."""
    return peek_field(path, "sessionId")


def find_subagent_files(main: Path, session_id: str = "") -> list[Path]:
    """Subagent files of a main transcript: nested (2.1.x) and flat siblings (2.0.x)."""
    found = sorted((main.parent / main.stem / "subagents").glob("agent-*.jsonl"))
    wanted = session_id or main.stem
    found += [p for p in sorted(main.parent.glob("agent-*.jsonl")) if peek_session_id(p) == wanted]
    return found


def parent_transcript(agent: Path) -> Path | None:
    """The main transcript a subagent file belongs to (None when its session id is unknown)."""
    if agent.parent.name == "subagents":
        session_dir = agent.parent.parent
        return session_dir.parent / f"{session_dir.name}.jsonl"
    session_id = peek_session_id(agent)
    return agent.parent / f"{session_id}.jsonl" if session_id else None


def _listing(folder: Path) -> tuple[dict[str, list[Path]], set[str]]:
    """A directory's flat agent files (`agent-*.jsonl`, sorted) by session id, and its names."""
    try:
        names = {entry.name for entry in os.scandir(folder)}
    except OSError:
        names = set()
    flat: dict[str, list[Path]] = {}
    agents = sorted(folder / n for n in names if n.startswith("agent-") and n.endswith(".jsonl"))
    for agent in agents:
        flat.setdefault(peek_session_id(agent), []).append(agent)
    return flat, names


def dropped_agent_reason(conv: Conversation) -> str | None:
    """Why a subagent run is not training data: `acompact_agent`, `warmup_agent`, or None."""
    if conv.agent_id.startswith("acompact") or conv.path.name.startswith("agent-acompact"):
        return "acompact_agent"
    users = [t for t in conv.turns if t.role == "user"]
    if (users and users[0].text.strip() == "Warmup") or (not users and len(conv.turns) <= 1):
        return "warmup_agent"
    return None


def load_session(main: Path, subagent_files: Sequence[Path] | None = None) -> Conversation:
    """Parse a main transcript and attach its subagents, linked to their Task/Agent calls.

    Subagents are linked by the parent's `toolUseResult.agentId` (2.0.x+) or, for inline 1.0.x
    sidechains, by their first prompt equal to the Task call's `prompt`.

    Args:
        main: The session's main transcript.
        subagent_files: Its subagent files; found with `find_subagent_files` when None.

    Returns:
        The conversation, with warm-up and compaction agents dropped (counted in `skipped`).
    """
    conv = parse_file(main)
    if subagent_files is None:
        subagent_files = find_subagent_files(main, conv.session_id)
    candidates = conv.subagents + [parse_file(p, subagent=True) for p in subagent_files]
    calls: dict[str, ToolCall] = {}
    by_agent: dict[str, str] = {}
    for turn in conv.turns:  # one pass over the turns for both maps
        for call in turn.tool_calls:
            if call["name"] in SUBAGENT_TOOLS:
                calls[call["id"]] = call
        for result in turn.results:
            if "agent_id" in result:
                by_agent[result["agent_id"]] = result["tool_use_id"]
    by_prompt = {str(c["input"].get("prompt", "")).strip(): i for i, c in calls.items()}
    conv.subagents = []
    for sub in candidates:
        reason = dropped_agent_reason(sub)
        if reason:
            conv.skipped[reason] += 1
            work = [t for t in sub.turns if has_work(t, thinking=True)]
            conv.lost[f"tool_calls:{reason}"] += sum(len(t.tool_calls) for t in work)
            conv.lost[f"assistant_turns:{reason}"] += len(work)
            continue
        first_user = next((t.text.strip() for t in sub.turns if t.role == "user"), "")
        tool_id = by_agent.pop(sub.agent_id, None) or by_prompt.pop(first_user, None)
        if tool_id:
            sub.parent_tool_use_id, sub.task = tool_id, calls.get(tool_id)
        else:
            conv.skipped["unlinked_agent"] += 1
        conv.subagents.append(sub)
    conv.subagents.sort(key=lambda s: (s.started, str(s.path)))
    return conv


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector while one session is parsed and curated.

    Parsing allocates hundreds of thousands of dicts and lists, all freed by reference counting
    (the parsed structures hold no cycles); the collector would only rescan them again and
    again, which took a quarter of the extraction time.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _session_skips(conv: Conversation) -> Counter[str]:
    """Everything a session and its subagents left out, and `empty_session` if it has no turns."""
    skipped = Counter(conv.skipped)
    for sub in conv.subagents:
        skipped.update(sub.skipped)
    if not conv.turns:
        skipped["empty_session"] += 1
    return skipped


def _identity(path: Path) -> dict[str, float]:
    st = path.stat()
    return {"dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime": st.st_mtime}


def _changed(cursors: Cursors, key: str, now: dict[str, float]) -> bool:
    raw = cursors.get_cursor(key)
    try:
        old = json.loads(raw) if raw else None
    except ValueError:
        old = None
    if not isinstance(old, dict):
        return True
    return any(old.get(k) != now[k] for k in ("dev", "ino", "size"))


class SessionCollector:
    """Claude Code transcripts -> strategy A/B/D samples (implements `protocols.Collector`).

    Args:
        dirs: roots to search for transcripts (usually `~/.claude/projects`).
        quiet_minutes: a session's samples become trainable this long after its last write.
        archive_dir: where gzip copies of raw transcripts are kept (None: no archive).
        thinking: include thinking as a `<think>...</think>` prefix of assistant content.
        tool_output_chars: longest tool output kept in a sample (head and tail around a marker).
        quality: scoring configuration (the defaults when None).
        max_tokens: token budget of one strategy A or D window (pass
            `pipeline.tokens.window_tokens(config)`, from the training profile's length).
        count: tokens of one message (`pipeline.tokens.message_counter(config)`: the base
            model's tokenizer when on disk); the conservative estimate when None.
        exclude: `sources.exclude` patterns; a session whose file, project folder or working
            directory matches is not parsed and is counted as skipped `excluded`.
        forget_file: the home's `forget.json`: forgotten sessions are skipped (`forgotten`),
            lines `samctl data forget --match` removed are not archived again.

    `collect` never raises for one file's problem: unreadable or vanished files are counted.
    """

    name = "sessions"

    def __init__(
        self,
        dirs: list[Path],
        quiet_minutes: float = 10.0,
        archive_dir: Path | None = None,
        thinking: bool = True,
        tool_output_chars: int = 2000,
        quality: QualityConfig | None = None,
        max_tokens: int = 4096,
        count: TokenCount | None = None,
        exclude: Sequence[str] = (),
        forget_file: Path | None = None,
    ) -> None:
        self.dirs = [Path(d).expanduser().absolute() for d in dirs]
        self.filter = SessionFilter(exclude, forget_file)
        self.quiet_minutes = quiet_minutes
        self.archive_dir = Path(archive_dir).expanduser().absolute() if archive_dir else None
        self.options = CurateOptions(
            thinking=thinking,
            tool_output_chars=tool_output_chars,
            max_tokens=max_tokens,
            count=count or estimate_tokens,
        )
        self.quality = quality

    def collect(self, cursors: Cursors, paths: Sequence[Path] | None = None) -> CollectResult:
        """Extract every new or changed session (only those `paths` touch, when given).

        Args:
            cursors: Stored `sessions:<path>` identities; updated ones are returned, not written.
            paths: Files or directories to look at instead of all of `dirs`.
        """
        result = CollectResult()
        files = self._discover(paths, result)
        if self.filter.rules:  # by path alone, before any file (a flat subagent's too) is opened
            files = [f for f in files if not self._excluded_path(f, cursors, result)]
        for main, agents in self._sessions(files, result).items():
            why = self.filter.why_not(main)
            if why:
                skip_excluded(cursors, result, self._key(main), file_ident(main), why)
                continue
            files = [main, *agents]
            try:
                idents = {f: _identity(f) for f in files}
            except OSError:
                result.skipped["missing_file"] += 1
                continue
            if not any(_changed(cursors, self._key(f), idents[f]) for f in files):
                result.skipped["unchanged"] += 1
                continue
            result.merge(self._extract(main, agents, idents))
        return result

    def ingest_file(self, path: Path) -> CollectResult:
        """Extract one session now, whatever the cursors say (a subagent file means its parent)."""
        path = Path(path).expanduser().absolute()
        main = parent_transcript(path) if is_subagent_file(path) else path
        result = CollectResult()
        if main is None or not main.is_file():
            result.skipped["orphan_subagent"] += 1
            return result
        why = self.filter.why_not(main)
        if why:
            result.skipped[why] += 1
            return result
        agents = find_subagent_files(main, peek_session_id(main))
        try:
            idents = {f: _identity(f) for f in [main, *agents]}
        except OSError:
            result.skipped["missing_file"] += 1
            return result
        result.merge(self._extract(main, agents, idents))
        return result

    @staticmethod
    def _key(path: Path) -> str:
        return f"sessions:{path}"

    def _excluded_path(self, f: Path, cursors: Cursors, result: CollectResult) -> bool:
        if not self.filter.rules.match_file(f):
            return False
        if not is_subagent_file(f):  # counted once per session, by its main transcript
            skip_excluded(cursors, result, self._key(f), file_ident(f))
        return True

    def _discover(self, paths: Sequence[Path] | None, result: CollectResult) -> list[Path]:
        roots = self.dirs if paths is None else [Path(p).expanduser().absolute() for p in paths]
        found: list[Path] = []
        for root in roots:
            if root.is_dir():
                found += sorted(root.rglob("*.jsonl"))
            elif root.is_file() and root.suffix == ".jsonl":
                found.append(root)
            elif not root.exists():
                result.skipped["missing_dir" if paths is None else "missing_file"] += 1
        return found

    def _sessions(self, files: list[Path], result: CollectResult) -> dict[Path, list[Path]]:
        """Main transcript -> its subagent files, for every session the files belong to."""
        mains: set[Path] = set()
        for f in files:
            main = parent_transcript(f) if is_subagent_file(f) else f
            if main is None or not main.is_file():
                # A dangling or looping symlink, or a subagent whose main transcript is gone.
                broken = main is not None and main.is_symlink()
                result.skipped["broken_link" if broken else "orphan_subagent"] += 1
                continue
            mains.add(main)
        listed: dict[Path, tuple[dict[str, list[Path]], set[str]]] = {}
        sessions: dict[Path, list[Path]] = {}
        for main in sorted(mains):
            # List each directory once, not once per main transcript: its flat agent files by
            # session, and its entries (most sessions have no `<session>/subagents/` to glob).
            if main.parent not in listed:
                listed[main.parent] = _listing(main.parent)
            flat, entries = listed[main.parent]
            nested = []
            if main.stem in entries:
                nested = sorted((main.parent / main.stem / "subagents").glob("agent-*.jsonl"))
            # Most directories hold no flat agent files: then the main file need not be opened.
            wanted = (peek_session_id(main) or main.stem) if flat else ""
            sessions[main] = nested + flat.get(wanted, [])
        return sessions

    def _extract(
        self, main: Path, agents: list[Path], idents: dict[Path, dict[str, float]]
    ) -> CollectResult:
        result = CollectResult()
        ready_after = max(i["mtime"] for i in idents.values()) + self.quiet_minutes * 60
        try:
            with _no_cyclic_gc():
                conv = load_session(main, agents)
                coverage: Counter[str] = Counter()
                result.samples = curate(conv, self.options, self.quality, ready_after, coverage)
                # Counted and freed while the collector is paused: once it runs again it would
                # scan every dict and list of the parsed session one more time.
                skipped = _session_skips(conv)
                del conv
        except OSError as err:
            log.warning("sessions collector: cannot read %s: %s", main, err)
            result.skipped["read_error"] += 1
            return result  # cursors not advanced: retried on the next pass
        except Exception:
            # One odd transcript must not stop the others; it is retried when it changes.
            log.exception("sessions collector: cannot parse %s", main)
            result.skipped["parse_error"] += 1
        else:
            result.replace_keys.add(str(main))
            result.skipped.update(skipped)
            if not result.samples:
                coverage["sessions_without_samples"] += 1
            result.coverage[str(main)] = coverage
        for f, ident in idents.items():
            result.cursors[self._key(f)] = json.dumps(ident, sort_keys=True)
            if self.archive_dir is not None:
                self._archive(f)
        return result

    def _archive(self, path: Path) -> None:
        """Write a gzip copy of `path` under the archive, atomically (temp file, then rename)."""
        assert self.archive_dir is not None
        root = next((d for d in self.dirs if path.is_relative_to(d)), None)
        rel = path.relative_to(root) if root else Path(path.parent.name) / path.name
        dest = self.archive_dir / rel.parent / f"{rel.name}.gz"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_archive_copy(path, dest, self.filter.tombstones().lines)
        except OSError as err:
            log.warning("sessions collector: cannot archive %s: %s", path, err)
