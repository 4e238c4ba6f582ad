"""Docs collector: project Markdown and Claude Code `SKILL.md` files become knowledge samples.

Each file is cut at its `#`/`##`/`###` headings (never inside code fences), keeping the heading path
as context, and sections longer than `max_chunk_chars` are split at paragraph boundaries. A chunk
becomes "In <project>, what does the documentation say about <heading path>?" -> chunk text; a
`SKILL.md` with `name`/`description` front matter also becomes "How do I <description>?" -> skill
body. Cursors: `docs:<file>` holds the file's sha256 (unchanged files are skipped) and
`docs:index:<root>` the JSON list of files last seen under a root, so deleted files are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]

from sam_brain.pipeline.exclude import PathRules, file_ident, skip_excluded
from sam_brain.protocols import CollectResult, Cursors, Sample, stable_id

SKIP_DIRS = frozenset(
    {".git", ".hg", ".svn", "node_modules", ".venv", "venv", "__pycache__", ".tox", ".nox",
     ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages", "dist", "build", "target",
     ".cache", ".next", "vendor"}
)  # fmt: skip
MAX_FILE_BYTES = 2_000_000  # larger Markdown is generated output, not documentation
MIN_CHUNK_CHARS = 30  # "TBD" sections teach nothing
SKILL_TRUNCATED = "[... skill truncated ...]"
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FENCE_CLOSE = re.compile(r"^ {0,3}(`{3,}|~{3,})[ \t]*$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SPLIT_LEVEL = 3  # deeper headings stay inside their section


@dataclass(frozen=True)
class DocChunk:
    """One section of a Markdown file (or one part of a long section)."""

    heading_path: tuple[str, ...]
    text: str
    file: Path
    part: int = 0
    parts: int = 1


def chunks(path: Path, max_chunk_chars: int = 4000) -> list[DocChunk]:
    """The file's non-empty sections, in order, each at most `max_chunk_chars` long."""
    _, body = split_front_matter(path.read_text(encoding="utf-8"))
    return _chunk_text(body, path, max_chunk_chars)


def split_front_matter(text: str) -> tuple[dict[str, Any], str]:
    """YAML front matter (`---` ... `---` at the top) as a dict, and the rest of the text."""
    match = re.match(r"\A---[ \t]*\r?\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\r?\n|\Z)", text, re.S | re.M)
    if not match:
        return {}, text
    try:
        meta = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        meta = None
    return (meta if isinstance(meta, dict) else {}), text[match.end() :]


def _chunk_text(body: str, path: Path, max_chars: int) -> list[DocChunk]:
    out: list[DocChunk] = []
    for heading_path, text in _sections(body):
        pieces = _pack(text, max_chars)
        out += [DocChunk(heading_path, p, path, i, len(pieces)) for i, p in enumerate(pieces)]
    return out


def _fenced(lines: list[str]) -> Iterator[tuple[str, bool]]:
    """Each line with True when it is part of a fenced code block (fence lines included)."""
    fence = ""
    for line in lines:
        if fence:
            close = _FENCE_CLOSE.match(line)
            if close and close.group(1)[0] == fence[0] and len(close.group(1)) >= len(fence):
                fence = ""
            yield line, True
        elif opener := _FENCE.match(line):
            fence = opener.group(1)
            yield line, True
        else:
            yield line, False


def _sections(body: str) -> Iterator[tuple[tuple[str, ...], str]]:
    stack: list[tuple[int, str]] = []
    lines: list[str] = []
    for line, in_code in _fenced(body.splitlines()):
        heading = None if in_code else _HEADING.match(line)
        if heading and len(heading.group(1)) <= _SPLIT_LEVEL:
            yield tuple(t for _, t in stack), "\n".join(lines).strip()
            level = len(heading.group(1))
            stack = [(lv, t) for lv, t in stack if lv < level] + [(level, heading.group(2) or "")]
            lines = []
            continue
        lines.append(line)
    yield tuple(t for _, t in stack), "\n".join(lines).strip()


def _pack(text: str, max_chars: int) -> list[str]:
    """Greedily join paragraphs (code blocks kept whole when they fit) into pieces <= max_chars."""
    if len(text) < MIN_CHUNK_CHARS:
        return []
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    current = ""
    for block in _blocks(text):
        for part in _hard_split(block, max_chars):
            if current and len(current) + 2 + len(part) > max_chars:
                pieces.append(current)
                current = ""
            current = f"{current}\n\n{part}" if current else part
    if current:
        pieces.append(current)
    return [p.strip() for p in pieces if p.strip()]


def _blocks(text: str) -> list[str]:
    """Paragraphs separated by blank lines; a fenced code block with blank lines stays one block."""
    blocks: list[str] = []
    lines: list[str] = []
    for line, in_code in _fenced(text.splitlines()):
        if not in_code and not line.strip():
            if lines:
                blocks.append("\n".join(lines))
            lines = []
            continue
        lines.append(line)
    if lines:
        blocks.append("\n".join(lines))
    return blocks


def _hard_split(block: str, max_chars: int) -> list[str]:
    """A block longer than max_chars cut at line ends, or mid-line as a last resort."""
    if len(block) <= max_chars:
        return [block]
    out: list[str] = []
    current = ""
    for line in block.splitlines():
        while len(line) > max_chars:
            if current:
                out.append(current)
                current = ""
            out.append(line[:max_chars])
            line = line[max_chars:]
        if current and len(current) + 1 + len(line) > max_chars:
            out.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    if current:
        out.append(current)
    return out


class DocsCollector:
    """Knowledge samples from Markdown docs and skills (implements `protocols.Collector`).

    Args:
        paths: folders (searched recursively, skipping `SKIP_DIRS`) or single `.md` files.
        max_chunk_chars: longest chunk; longer sections are split at paragraph boundaries.

    A root that is missing (an unmounted drive) is skipped without removing its samples.
    """

    name = "docs"

    def __init__(
        self, paths: list[Path], max_chunk_chars: int = 4000, exclude: Sequence[str] = ()
    ) -> None:
        self.roots = [Path(p).expanduser().resolve() for p in paths]
        self.exclude = PathRules(exclude)  # `sources.exclude`: such files are never read
        self.max_chunk_chars = max_chunk_chars

    def chunks(self, path: Path) -> list[DocChunk]:
        """The file's chunks as this collector cuts them (for retrieval context)."""
        return chunks(path, self.max_chunk_chars)

    def collect(self, cursors: Cursors, paths: Sequence[Path] | None = None) -> CollectResult:
        """Read new and changed files; report deleted ones. With `paths`, only those (files or folders)."""
        result = CollectResult()
        targets = None if paths is None else [Path(p).expanduser().resolve() for p in paths]
        if targets is not None:
            outside = [t for t in targets if not any(_within(t, r) for r in self.roots)]
            if outside:
                result.skipped["outside_roots"] += len(outside)
        for root in self.roots:
            if not root.exists():
                result.skipped["missing_root"] += 1
                continue
            mine = None if targets is None else [t for t in targets if _within(t, root)]
            if mine is None or mine:
                self._collect_root(root, mine, cursors, result)
        return result

    def _collect_root(
        self, root: Path, targets: list[Path] | None, cursors: Cursors, result: CollectResult
    ) -> None:
        index_key = f"docs:index:{root}"
        try:
            known = set(json.loads(cursors.get_cursor(index_key) or "[]"))
        except (json.JSONDecodeError, TypeError):
            known = set()
        if targets is None:
            found = set(_markdown_files(root))
            gone = known - found
        else:
            found, gone = set(), set()
            for target in targets:
                if target.exists():
                    found |= set(_markdown_files(target, root))
                else:  # a deleted file, or every known file of a deleted folder
                    gone |= {k for k in known if _within(Path(k), target)}
        for name in sorted(found):
            self._collect_file(Path(name), root, cursors, result)
        for name in sorted(gone):
            result.replace_keys.add(f"docs:{name}")
            result.cursors[f"docs:{name}"] = ""
        index = sorted((known - gone) | found)
        if index != sorted(known):
            result.cursors[index_key] = json.dumps(index)

    def _collect_file(
        self, path: Path, root: Path, cursors: Cursors, result: CollectResult
    ) -> None:
        key = f"docs:{path}"
        if self.exclude.match(path):
            skip_excluded(cursors, result, key, file_ident(path))
            return
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                result.skipped["too_large"] += 1
                return
            data = path.read_bytes()
        except OSError:
            result.skipped["unreadable"] += 1
            return
        digest = hashlib.sha256(data).hexdigest()
        if cursors.get_cursor(key) == digest:
            result.skipped["unchanged"] += 1
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            result.skipped["not_utf8"] += 1
            return
        samples = self._samples(path, root, text)
        if not samples:
            result.skipped["empty"] += 1
        result.samples += samples
        result.replace_keys.add(key)  # old chunks of a changed file go, even if none replace them
        result.cursors[key] = digest

    def _samples(self, path: Path, root: Path, text: str) -> list[Sample]:
        front, body = split_front_matter(text)
        doc_chunks = _chunk_text(body, path, self.max_chunk_chars)
        title = str(front.get("title") or "").strip() or _first_h1(body) or path.stem
        project = _project_name(path, root)
        meta = {"file": str(path), "root": str(root), "project": project, "title": title}
        samples: list[Sample] = []
        seen: Counter[tuple[tuple[str, ...], int]] = Counter()
        for chunk in doc_chunks:
            # Two sections may share a heading path; the occurrence number keeps their ids apart.
            occurrence = seen[(chunk.heading_path, chunk.part)]
            seen[(chunk.heading_path, chunk.part)] += 1
            shown = (
                chunk.heading_path[1:] if chunk.heading_path[:1] == (title,) else chunk.heading_path
            )
            topic = " > ".join(h for h in shown if h)
            question = (
                f'In {project}, what does the documentation "{title}" say about {topic}?'
                if topic
                else f'In {project}, what does the documentation "{title}" say in its introduction?'
            )
            if chunk.parts > 1:
                question += f" (part {chunk.part + 1} of {chunk.parts})"
            ident = stable_id(
                "docs", str(path), *chunk.heading_path, str(occurrence), str(chunk.part)
            )
            where = {
                "heading_path": list(chunk.heading_path),
                "part": chunk.part,
                "parts": chunk.parts,
            }
            samples.append(self._sample(ident, path, question, chunk.text, "C", meta | where))
        if path.name.lower() == "skill.md":
            skill = self._skill_sample(path, front, body, meta)
            if skill is not None:
                samples.append(skill)
        return samples

    def _skill_sample(
        self, path: Path, front: dict[str, Any], body: str, meta: dict[str, Any]
    ) -> Sample | None:
        name = str(front.get("name") or "").strip()
        description = " ".join(str(front.get("description") or "").split()).rstrip(".!? ")
        if description:
            if not description[1:2].isupper():  # keep acronyms like "PDF" capitalised
                description = description[0].lower() + description[1:]
            question = f"How do I {description}?"
        elif name:
            question = f"How do I use the {name} skill?"
        else:
            return None
        pieces = _pack(body.strip(), self.max_chunk_chars)
        if not pieces:
            return None
        answer = pieces[0] if len(pieces) == 1 else f"{pieces[0]}\n\n{SKILL_TRUNCATED}"
        ident = stable_id("docs", str(path), "skill")
        extra = {"skill_name": name, "truncated": len(pieces) > 1}
        return self._sample(ident, path, question, answer, "B", meta | extra)

    @staticmethod
    def _sample(
        ident: str, path: Path, question: str, answer: str, tier: str, meta: dict[str, Any]
    ) -> Sample:
        return Sample(
            id=ident,
            source="docs",
            source_key=f"docs:{path}",
            group=f"docs:{path}",  # chunks of one file share a split
            messages=[
                {"role": "user", "content": question},
                {"role": "assistant", "content": answer},
            ],
            strategy="C",
            tier=tier,
            meta=meta,
        )


def _markdown_files(top: Path, root: Path | None = None) -> Iterator[str]:
    """Markdown files under `top` (a folder or one file), skipping `SKIP_DIRS` below `root`."""
    root = root or top
    if top.is_file():
        rel = top.relative_to(root).parts[:-1] if _within(top, root) else ()
        if top.suffix.lower() == ".md" and not SKIP_DIRS.intersection(rel):
            yield str(top)
        return
    if SKIP_DIRS.intersection(top.relative_to(root).parts if _within(top, root) else ()):
        return
    for folder, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            if name.lower().endswith(".md"):
                yield os.path.join(folder, name)


def _first_h1(body: str) -> str:
    for line, in_code in _fenced(body.splitlines()):
        heading = None if in_code else _HEADING.match(line)
        if heading and len(heading.group(1)) == 1 and heading.group(2):
            return heading.group(2).strip()
    return ""


def _project_name(path: Path, root: Path) -> str:
    """The nearest enclosing repository's folder name, else the configured root's."""
    for folder in path.parents:
        if (folder / ".git").exists():
            return folder.name
        if folder == root or not _within(folder, root):
            break
    return (root if root.is_dir() else root.parent).name


def _within(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)
