"""GitCollector against real repositories built in tmp_path with the git CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from collectors.git import INSTRUCTION, TRUNCATION_MARKER, GitCollector, clean_message, is_trivial
from sam_brain.protocols import Collector, CollectResult

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


class DictCursors(dict[str, str]):
    """The cursor store: a dict that the test updates with each result, as the pipeline would."""

    def get_cursor(self, key: str) -> str | None:
        return self.get(key)

    def apply(self, result: CollectResult) -> CollectResult:
        self.update(result.cursors)
        return result


class Repo:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tick = 0
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")

    def git(self, *args: str, author: str = "Dev", email: str = "dev@example.com") -> str:
        self.tick += 1
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(self.path),
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_AUTHOR_NAME": author,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_COMMITTER_NAME": author,
            "GIT_COMMITTER_EMAIL": email,
            # Distinct timestamps keep the commit order unambiguous.
            "GIT_AUTHOR_DATE": f"{1_700_000_000 + self.tick} +0000",
            "GIT_COMMITTER_DATE": f"{1_700_000_000 + self.tick} +0000",
        }
        out = subprocess.run(
            ["git", *args], cwd=self.path, env=env, check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def commit(
        self,
        message: str,
        files: dict[str, str | bytes] | None = None,
        author: str = "Dev",
        email: str = "dev@example.com",
    ) -> str:
        for name, content in (
            files if files is not None else {f"f{self.tick}.txt": f"line {self.tick}\n"}
        ).items():
            target = self.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(content)
        self.git("add", "-A")
        self.git(
            "commit",
            "-q",
            "--allow-empty",
            "--allow-empty-message",
            "-m",
            message,
            author=author,
            email=email,
        )
        return self.git("rev-parse", "HEAD")


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "proj")


def test_new_commits_become_samples_and_cursor_advances(repo: Repo) -> None:
    shas = [repo.commit(f"Add feature {i}\n\nExplains change {i}.") for i in range(3)]
    collector = GitCollector([repo.path], bot_authors=[])
    assert isinstance(collector, Collector)
    cursors = DictCursors()

    first = cursors.apply(collector.collect(cursors))
    assert [s.meta["sha"] for s in first.samples] == shas  # oldest first
    assert cursors[f"git:{repo.path}"] == shas[-1]
    sample = first.samples[0]
    assert sample.source == "git"
    assert sample.group == shas[0]
    assert sample.source_key == f"git:{repo.path}:{shas[0]}"
    assert first.replace_keys == {s.source_key for s in first.samples}
    user, assistant = sample.messages
    assert user["role"] == "user" and assistant["role"] == "assistant"
    assert user["content"].startswith(INSTRUCTION)
    assert "f1.txt | 1 +" in user["content"]  # the --stat summary
    assert "+line 1" in user["content"]  # the diff
    assert assistant["content"] == "Add feature 0\n\nExplains change 0."

    second = cursors.apply(collector.collect(cursors))
    assert second.samples == [] and second.cursors == {} and not second.skipped

    new = repo.commit("Fix the parser on empty input")
    third = cursors.apply(collector.collect(cursors))
    assert [s.meta["sha"] for s in third.samples] == [new]
    assert cursors[f"git:{repo.path}"] == new


def test_ids_are_stable_across_collectors(repo: Repo) -> None:
    repo.commit("Add the thing")
    a = GitCollector([repo.path], []).collect(DictCursors())
    b = GitCollector([repo.path], []).collect(DictCursors())
    assert [s.id for s in a.samples] == [s.id for s in b.samples]
    assert len(a.samples) == 1


def test_merges_bots_and_trivial_messages_are_skipped_and_counted(repo: Repo) -> None:
    root = repo.commit("Initial layout of the project", {"a.txt": "a\n"})
    repo.git("checkout", "-q", "-b", "side")
    side = repo.commit("Side work on b", {"b.txt": "b\n"})
    repo.git("checkout", "-q", "main")
    main = repo.commit("Main work on c", {"c.txt": "c\n"})
    repo.git("merge", "-q", "--no-ff", "-m", "Merge branch side", "side")
    repo.commit("Bump deps", {"d.txt": "d\n"}, author="dependabot[bot]", email="bot@example.com")
    repo.commit("Nightly sync", {"e.txt": "e\n"}, author="Sync", email="CI-Bot@Example.com")
    repo.commit("wip", {"f.txt": "f\n"})
    repo.commit(".", {"g.txt": "g\n"})
    repo.commit("fixup! Main work on c", {"h.txt": "h\n"})
    repo.commit("", {"i.txt": "i\n"})
    repo.commit("Empty commit on purpose", {})  # no file changes: an empty diff

    collector = GitCollector([repo.path], bot_authors=["dependabot[bot]", "ci-bot@example.com"])
    result = collector.collect(DictCursors())

    # Topological order: the side branch's commit and main's commit both follow the root.
    assert result.samples[0].meta["sha"] == root
    assert sorted(s.meta["sha"] for s in result.samples[1:]) == sorted([side, main])
    assert dict(result.skipped) == {
        "merge": 1,
        "bot": 2,
        "trivial_message": 3,
        "empty_message": 1,
        "empty_diff": 1,
    }


def test_long_diff_is_truncated_with_marker(repo: Repo) -> None:
    body = "".join(f"line number {i:05d} of a long generated file\n" for i in range(2000))
    repo.commit("Add generated data", {"data.txt": body})
    result = GitCollector([repo.path], [], max_diff_chars=1000).collect(DictCursors())
    (sample,) = result.samples
    content = sample.messages[0]["content"]
    diff = content.split("Diff:\n", 1)[1]
    assert diff.endswith(TRUNCATION_MARKER)
    assert 500 < len(diff) <= 1000 + len(TRUNCATION_MARKER) + 1
    assert sample.meta["diff_truncated"] is True

    small = GitCollector([repo.path], [], max_diff_chars=1_000_000).collect(DictCursors())
    assert small.samples[0].meta["diff_truncated"] is False
    assert TRUNCATION_MARKER not in small.samples[0].messages[0]["content"]


def test_binary_files_are_noted(repo: Repo) -> None:
    repo.commit("Add the logo", {"logo.png": b"\x89PNG\r\n\x1a\n\x00\x00\x00binary"})
    (sample,) = GitCollector([repo.path], []).collect(DictCursors()).samples
    assert sample.meta["binary_files"] == ["logo.png"]
    assert "Binary files changed (content not shown): logo.png" in sample.messages[0]["content"]


def test_first_pass_takes_newest_commits_then_continues_in_order(repo: Repo) -> None:
    shas = [repo.commit(f"Change number {i}") for i in range(7)]
    collector = GitCollector([repo.path], [], max_commits_per_pass=3)
    cursors = DictCursors()
    first = cursors.apply(collector.collect(cursors))
    assert [s.meta["sha"] for s in first.samples] == shas[4:]  # newest 3 of the history

    more = [repo.commit(f"Later change {i}") for i in range(5)]
    second = cursors.apply(collector.collect(cursors))
    assert [s.meta["sha"] for s in second.samples] == more[:3]  # capped, oldest first
    third = cursors.apply(collector.collect(cursors))
    assert [s.meta["sha"] for s in third.samples] == more[3:]
    assert collector.collect(cursors).samples == []


def test_rewritten_history_neither_duplicates_nor_crashes(repo: Repo) -> None:
    base = [repo.commit(f"Base change {i}") for i in range(3)]
    collector = GitCollector([repo.path], [])
    cursors = DictCursors()
    seen = [s.id for s in cursors.apply(collector.collect(cursors)).samples]
    assert len(seen) == 3

    repo.git("reset", "-q", "--hard", base[0])
    rewritten = [repo.commit(f"Rewritten change {i}") for i in range(2)]
    after = cursors.apply(collector.collect(cursors))
    assert after.skipped["cursor_reset"] == 1
    assert [s.meta["sha"] for s in after.samples] == rewritten  # only the new commits
    seen += [s.id for s in after.samples]
    assert len(seen) == len(set(seen)) == 5
    assert cursors[f"git:{repo.path}"] == rewritten[-1]
    assert collector.collect(cursors).samples == []


def test_lost_cursor_commit_falls_back_to_recent_history(repo: Repo) -> None:
    shas = [repo.commit(f"Change {i}") for i in range(3)]
    cursors = DictCursors({f"git:{repo.path}": "f" * 40})  # e.g. garbage-collected after a rebase
    result = GitCollector([repo.path], []).collect(cursors)
    assert result.skipped["cursor_reset"] == 1
    assert [s.meta["sha"] for s in result.samples] == shas
    assert result.cursors == {f"git:{repo.path}": shas[-1]}

    cursors = DictCursors({f"git:{repo.path}": "--not-a-sha"})
    assert len(GitCollector([repo.path], []).collect(cursors).samples) == 3


def test_bad_paths_are_skipped_not_raised(tmp_path: Path, repo: Repo) -> None:
    repo.commit("Only commit")
    plain = tmp_path / "plain"
    plain.mkdir()
    empty = Repo(tmp_path / "empty")
    collector = GitCollector([tmp_path / "missing", plain, empty.path, repo.path], [])
    result = collector.collect(DictCursors())
    assert len(result.samples) == 1
    assert dict(result.skipped) == {"missing_repo": 1, "not_a_repo": 1, "no_commits": 1}


def test_plain_folder_inside_a_repo_is_not_that_repo(repo: Repo) -> None:
    repo.commit("Only commit")
    inner = repo.path / "notes"
    inner.mkdir()
    result = GitCollector([inner], []).collect(DictCursors())
    assert result.samples == [] and dict(result.skipped) == {"not_a_repo": 1}


def test_paths_limit_the_pass_to_matching_repos(tmp_path: Path) -> None:
    one, two = Repo(tmp_path / "one"), Repo(tmp_path / "two")
    one.commit("Change in one")
    two.commit("Change in two")
    collector = GitCollector([one.path, two.path], [])
    result = collector.collect(DictCursors(), paths=[two.path / ".git" / "HEAD"])
    assert [s.meta["repo"] for s in result.samples] == [str(two.path)]


def test_message_helpers() -> None:
    msg = "Add X\n\nBody.\n\n🤖 Generated with [Claude Code](https://claude.com)\n\nCo-Authored-By: C <c@x>\n"
    assert clean_message(msg) == "Add X\n\nBody."
    assert is_trivial("WIP") and is_trivial("...") and is_trivial("Update.")
    assert not is_trivial("Update the README with install steps")
