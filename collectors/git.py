"""Git collector: each new commit in a configured repository becomes a "write the commit message" sample.

The cursor `git:<repo>` holds the last processed commit on HEAD's branch, and each pass reads the
commits after it, oldest first, at most `max_commits_per_pass`. Rewritten or switched history (the
cursor commit is gone or no longer an ancestor of HEAD) is read again from the fork point, or from
the newest commits when the old commit is gone; ids come from the repo path and the commit sha, so
a commit read twice updates its sample instead of adding one. Only the `git` CLI is used.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sam_brain.errors import CollectorFailed
from sam_brain.pipeline.exclude import PathRules, skip_excluded
from sam_brain.protocols import CollectResult, Cursors, Sample, stable_id

log = logging.getLogger(__name__)

INSTRUCTION = "Write the commit message for this change."
TRUNCATION_MARKER = "[... diff truncated ...]"
# Messages that say nothing about the change; compared lowercased with punctuation stripped.
# fmt: off
TRIVIAL_MESSAGES = frozenset({
    "", "wip", "fix", "fixes", "fixed", "update", "updates", "updated", "tmp", "temp", "test",
    "tests", "asdf", "x", "xx", "xxx", "foo", "commit", "changes", "change", "minor", "misc",
    "stuff", "save", "checkpoint", "cleanup", "init", "todo", "initial commit", "first commit",
})
# fmt: on
# Trailer lines added by tools, not written by the author.
_TRAILER = re.compile(
    r"^\s*((signed-off-by|co-authored-by|change-id|reviewed-by):.*|.*generated with \[claude code\].*)$",
    re.IGNORECASE,
)
_BINARY_STAT = re.compile(r"^\s*(.+?)\s+\|\s+Bin\b")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_FIELD, _RECORD = "\x1f", "\x1e"
_LOG_FORMAT = "%H%x1f%P%x1f%an%x1f%ae%x1f%ct%x1f%B%x1e"
_TIMEOUT_S = 120
# Output-affecting user settings are pinned so every machine produces the same sample text.
_GIT_SETTINGS = (
    "core.quotepath=off",
    "color.ui=never",
    "log.showSignature=false",
    "i18n.logOutputEncoding=UTF-8",
    "diff.noprefix=false",
    "diff.mnemonicPrefix=false",
    "diff.relative=false",
    "diff.renames=true",
)
_GIT_OPTS = tuple(arg for setting in _GIT_SETTINGS for arg in ("-c", setting))


class _GitError(Exception):
    """A git command failed; caught per repository and counted."""


@dataclass(frozen=True)
class _Commit:
    sha: str
    parents: tuple[str, ...]
    author: str
    email: str
    time: int
    message: str


class GitCollector:
    """Turns commits into commit-message samples (implements `protocols.Collector`).

    Args:
        repos: repository working trees (or bare repositories) to read.
        bot_authors: author names or emails (case-insensitive, exact) whose commits are skipped.
        max_diff_chars: diff characters kept in the prompt; longer diffs end with a marker.
        max_commits_per_pass: commits read per repository per pass (the rest wait for the next).

    `collect` never raises for one repository's problem (missing, not a repo, git error): it
    counts a skip reason. It raises `CollectorFailed` only when the `git` executable is missing.
    """

    name = "git"

    def __init__(
        self,
        repos: list[Path],
        bot_authors: list[str],
        max_diff_chars: int = 4000,
        max_commits_per_pass: int = 500,
        exclude: Sequence[str] = (),
    ) -> None:
        self.repos = [Path(r).expanduser().absolute() for r in repos]
        self.exclude = PathRules(exclude)  # `sources.exclude`: such repos are never read
        self.bot_authors = {b.strip().lower() for b in bot_authors if b.strip()}
        self.max_diff_chars = max_diff_chars
        self.max_commits_per_pass = max_commits_per_pass

    def collect(self, cursors: Cursors, paths: Sequence[Path] | None = None) -> CollectResult:
        """Read new commits of every repo (only repos containing one of `paths` when given)."""
        if shutil.which("git") is None:
            raise CollectorFailed("git collector: the `git` executable is not on PATH")
        result = CollectResult()
        for repo in self._selected(paths):
            if self.exclude.match(repo):
                skip_excluded(cursors, result, f"git:{repo}", {"repo": str(repo)})
                continue
            if not repo.is_dir():
                result.skipped["missing_repo"] += 1
                continue
            try:
                result.merge(self._collect_repo(repo, cursors))
            except _GitError as err:
                log.warning("git collector: %s: %s", repo, err)
                result.skipped["git_error"] += 1
        return result

    def _selected(self, paths: Sequence[Path] | None) -> list[Path]:
        if paths is None:
            return self.repos
        wanted = [Path(p).expanduser().absolute() for p in paths]
        return [r for r in self.repos if any(p == r or p.is_relative_to(r) for p in wanted)]

    def _collect_repo(self, repo: Path, cursors: Cursors) -> CollectResult:
        result = CollectResult()
        key = f"git:{repo}"
        if self._git_ok(repo, "rev-parse", "--git-dir") is None:
            result.skipped["not_a_repo"] += 1
            return result
        head = self._git_ok(repo, "rev-parse", "--verify", "-q", "HEAD^{commit}")
        if head is None:
            result.skipped["no_commits"] += 1
            return result
        head = head.strip()
        cursor = cursors.get_cursor(key)
        if cursor == head:
            return result
        shas = self._new_shas(repo, cursor, result.skipped)
        for commit in self._commits(repo, shas):
            sample = self._sample(repo, commit, result.skipped)
            if sample is not None:
                result.samples.append(sample)
                result.replace_keys.add(sample.source_key)
        # When capped, stop at the last commit read so the next pass continues from there.
        new_cursor = shas[-1] if shas else head
        if new_cursor != cursor:
            result.cursors[key] = new_cursor
        return result

    def _new_shas(self, repo: Path, cursor: str | None, skipped: Counter[str]) -> list[str]:
        """Commits to read, oldest first (parents before children)."""
        limit = self.max_commits_per_pass
        start = cursor
        if cursor is not None and not self._is_ancestor(repo, cursor):
            skipped["cursor_reset"] += 1
            # The fork point between old and new history, when the old commit still exists.
            base = (
                self._git_ok(repo, "merge-base", cursor, "HEAD")
                if self._exists(repo, cursor)
                else None
            )
            start = base.strip() if base else None
        if start is None:
            out = self._git(repo, "rev-list", "--topo-order", f"--max-count={limit}", "HEAD")
            return list(reversed(out.split()))
        out = self._git(repo, "rev-list", "--topo-order", "--reverse", f"{start}..HEAD")
        return out.split()[:limit]

    def _exists(self, repo: Path, sha: str) -> bool:
        # A cursor is only ever a sha; anything else is treated as lost rather than passed to git.
        if not _SHA.fullmatch(sha):
            return False
        return self._git_ok(repo, "cat-file", "-e", f"{sha}^{{commit}}") is not None

    def _is_ancestor(self, repo: Path, sha: str) -> bool:
        if not self._exists(repo, sha):
            return False
        return self._git_ok(repo, "merge-base", "--is-ancestor", sha, "HEAD") is not None

    def _commits(self, repo: Path, shas: list[str]) -> list[_Commit]:
        if not shas:
            return []
        out = self._git(
            repo,
            "log",
            "--no-walk=unsorted",
            "--stdin",
            f"--format={_LOG_FORMAT}",
            stdin="\n".join(shas) + "\n",
        )
        commits = []
        for record in out.split(_RECORD):
            fields = record.lstrip("\n").split(_FIELD)
            if len(fields) != 6:
                continue
            sha, parents, author, email, time, message = fields
            commits.append(_Commit(sha, tuple(parents.split()), author, email, int(time), message))
        return commits

    def _sample(self, repo: Path, commit: _Commit, skipped: Counter[str]) -> Sample | None:
        if len(commit.parents) > 1:
            skipped["merge"] += 1
            return None
        if commit.author.lower() in self.bot_authors or commit.email.lower() in self.bot_authors:
            skipped["bot"] += 1
            return None
        message = clean_message(commit.message)
        if not message:
            skipped["empty_message"] += 1
            return None
        if is_trivial(message):
            skipped["trivial_message"] += 1
            return None
        diff, truncated = self._diff(repo, commit.sha)
        if not diff.strip():
            skipped["empty_diff"] += 1
            return None
        stat = self._git(
            repo,
            "show",
            "--format=",
            "--stat=100",
            "--stat-graph-width=10",
            "--stat-count=50",
            "--no-color",
            commit.sha,
        ).strip("\n")
        binary = [m.group(1) for m in map(_BINARY_STAT.match, stat.splitlines()) if m]
        prompt = [INSTRUCTION, "", "Files changed:", stat, ""]
        if binary:
            prompt += [f"Binary files changed (content not shown): {', '.join(binary)}", ""]
        prompt += ["Diff:", diff]
        return Sample(
            id=stable_id("git", str(repo), commit.sha),
            source="git",
            source_key=f"git:{repo}:{commit.sha}",
            group=commit.sha,
            messages=[
                {"role": "user", "content": "\n".join(prompt)},
                {"role": "assistant", "content": message},
            ],
            strategy="B",
            tier="B",
            meta={
                "repo": str(repo),
                "sha": commit.sha,
                "author": commit.author,
                "committed_at": commit.time,
                "diff_truncated": truncated,
                "binary_files": binary,
            },
        )

    def _diff(self, repo: Path, sha: str) -> tuple[str, bool]:
        """The commit's patch, cut at a line boundary near `max_diff_chars`, plus whether it was cut."""
        limit = self.max_diff_chars
        # Read a bounded prefix so a vendored 100 MB commit costs no more than a small one.
        raw, complete = self._git_prefix(
            repo,
            (
                "show",
                "--format=",
                "--patch",
                "-M",
                "--no-color",
                "--no-ext-diff",
                "--no-textconv",
                sha,
            ),
            max_bytes=limit * 4 + 1,
        )
        text = raw.decode("utf-8", errors="replace").rstrip("\n")
        if complete and len(text) <= limit:
            return text, False
        cut = text[:limit]
        newline = cut.rfind("\n")
        if newline > limit // 2:
            cut = cut[:newline]
        return f"{cut}\n{TRUNCATION_MARKER}", True

    def _git(self, repo: Path, *args: str, stdin: str | None = None) -> str:
        out = self._git_ok(repo, *args, stdin=stdin, raise_on_error=True)
        assert out is not None
        return out

    def _git_ok(
        self, repo: Path, *args: str, stdin: str | None = None, raise_on_error: bool = False
    ) -> str | None:
        """A git command's stdout, or None when it exits non-zero (a "no" answer for queries)."""
        try:
            proc = subprocess.run(
                ["git", *_GIT_OPTS, "-C", str(repo), *args],
                input=(stdin or "").encode(),
                capture_output=True,
                env=_git_env(repo),
                timeout=_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise _GitError(f"git {args[0]} timed out after {_TIMEOUT_S} s") from exc
        if proc.returncode == 0:
            return proc.stdout.decode("utf-8", errors="replace")
        if raise_on_error:
            detail = proc.stderr.decode("utf-8", errors="replace").strip()
            raise _GitError(f"git {args[0]} failed ({proc.returncode}): {detail}")
        return None

    def _git_prefix(self, repo: Path, args: tuple[str, ...], max_bytes: int) -> tuple[bytes, bool]:
        """Up to `max_bytes` of a git command's output, and whether that was all of it."""
        with subprocess.Popen(
            ["git", *_GIT_OPTS, "-C", str(repo), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_git_env(repo),
        ) as proc:
            assert proc.stdout is not None and proc.stderr is not None
            data = proc.stdout.read(max_bytes)
            complete = proc.stdout.read(1) == b""
            if not complete:
                proc.kill()
            err = proc.stderr.read()
            try:
                code = proc.wait(timeout=_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                proc.kill()
                raise _GitError(f"git show timed out after {_TIMEOUT_S} s") from exc
        if complete and code != 0:
            raise _GitError(f"git show failed ({code}): {err.decode('utf-8', 'replace').strip()}")
        return data, complete


def clean_message(message: str) -> str:
    """The commit message without tool-added trailers and surrounding blank lines."""
    lines = message.strip().splitlines()
    while lines and (_TRAILER.match(lines[-1]) or not lines[-1].strip()):
        lines.pop()
    return "\n".join(line.rstrip() for line in lines).strip()


def is_trivial(message: str) -> bool:
    """True for messages that describe nothing ("wip", ".", "fix", "fixup! ...")."""
    first = message.strip().splitlines()[0].strip().lower() if message.strip() else ""
    if first.startswith(("fixup!", "squash!", "amend!")):
        return True
    return re.sub(r"[\W_]+", " ", first).strip() in TRIVIAL_MESSAGES


def _git_env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Stop git from climbing into a parent repository: a plain folder is "not a repo".
    env["GIT_CEILING_DIRECTORIES"] = str(repo.parent)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    return env
