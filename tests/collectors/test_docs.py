"""DocsCollector: heading chunks, SKILL.md front matter, and change/delete tracking via cursors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collectors.docs import SKILL_TRUNCATED, DocsCollector, chunks, split_front_matter
from sam_brain.protocols import Collector, CollectResult

GUIDE = """\
# Training Guide

This guide explains how the training pipeline works end to end.

## Data Sources

Git commits, project docs and distillation records feed the pool.

```bash
# this is a shell comment, not a heading
sam-brain collect
```

### Git Commits

Commit messages with diff summaries become samples.

## Empty Section

## Deployment

Adapters are versioned and can be rolled back at any time.

#### Deep detail

Level-four headings stay inside their section.
"""

SKILL = """\
---
name: commit-helper
description: >
  Generate commit messages
  from staged diffs.
---
# Commit helper

Run `git diff --staged`, then summarise the change in one imperative line.
"""


class DictCursors(dict[str, str]):
    def get_cursor(self, key: str) -> str | None:
        return self.get(key)

    def apply(self, result: CollectResult) -> CollectResult:
        self.update(result.cursors)
        return result


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "myproj"
    (root / ".git").mkdir(parents=True)
    (root / "docs").mkdir()
    (root / "docs" / "guide.md").write_text(GUIDE)
    (root / ".claude" / "skills" / "commit").mkdir(parents=True)
    (root / ".claude" / "skills" / "commit" / "SKILL.md").write_text(SKILL)
    for skipped in ("node_modules/pkg", ".venv/lib", ".git"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "README.md").write_text(
            "# Vendored\n\nThird-party text that must not be read.\n"
        )
    return root


def test_chunks_split_at_headings_with_paths(project: Path) -> None:
    got = chunks(project / "docs" / "guide.md")
    assert [c.heading_path for c in got] == [
        ("Training Guide",),
        ("Training Guide", "Data Sources"),
        ("Training Guide", "Data Sources", "Git Commits"),
        ("Training Guide", "Deployment"),
    ]
    assert "# this is a shell comment, not a heading" in got[1].text
    assert got[3].text.endswith("Level-four headings stay inside their section.")
    assert "#### Deep detail" in got[3].text
    assert all(c.file == project / "docs" / "guide.md" and c.parts == 1 for c in got)


def test_long_section_is_split_at_paragraphs(tmp_path: Path) -> None:
    paragraphs = [f"Paragraph {i} " + " ".join(["word"] * 40) for i in range(6)]  # 211 chars
    doc = tmp_path / "long.md"
    doc.write_text("## Big\n\n" + "\n\n".join(paragraphs) + "\n")
    got = chunks(doc, max_chunk_chars=500)
    assert len(got) == 3
    assert [c.part for c in got] == [0, 1, 2] and {c.parts for c in got} == {3}
    assert all(len(c.text) <= 500 for c in got)
    assert got[0].text == "\n\n".join(paragraphs[:2])
    assert "\n\n".join(c.text for c in got) == "\n\n".join(paragraphs)


def test_front_matter() -> None:
    meta, body = split_front_matter(SKILL)
    assert meta == {
        "name": "commit-helper",
        "description": "Generate commit messages from staged diffs.\n",
    }
    assert body.startswith("# Commit helper")
    assert split_front_matter("# No front matter\n") == ({}, "# No front matter\n")
    assert split_front_matter("---\n: [broken\n---\nbody\n") == ({}, "body\n")


def test_collect_builds_knowledge_and_skill_samples(project: Path) -> None:
    collector = DocsCollector([project])
    assert isinstance(collector, Collector)
    cursors = DictCursors()
    result = cursors.apply(collector.collect(cursors))

    guide = [s for s in result.samples if s.meta["file"].endswith("guide.md")]
    skill = [s for s in result.samples if s.meta["file"].endswith("SKILL.md")]
    assert len(guide) == 4 and len(skill) == 2  # the skill's own chunk + its how-to sample
    assert all(s.source == "docs" and s.strategy == "C" for s in result.samples)
    questions = [s.messages[0]["content"] for s in guide]
    assert questions == [
        'In myproj, what does the documentation "Training Guide" say in its introduction?',
        'In myproj, what does the documentation "Training Guide" say about Data Sources?',
        'In myproj, what does the documentation "Training Guide" say about Data Sources > Git Commits?',
        'In myproj, what does the documentation "Training Guide" say about Deployment?',
    ]
    assert guide[2].messages[1]["content"] == "Commit messages with diff summaries become samples."
    assert {s.source_key for s in guide} == {f"docs:{project / 'docs' / 'guide.md'}"}
    assert len({s.group for s in guide}) == 1

    how_to = next(s for s in skill if s.meta.get("skill_name") == "commit-helper")
    assert how_to.messages[0]["content"] == "How do I generate commit messages from staged diffs?"
    assert how_to.messages[1]["content"] == SKILL.split("---\n", 2)[2].strip()
    assert how_to.tier == "B"

    index = json.loads(cursors[f"docs:index:{project}"])
    assert sorted(Path(p).name for p in index) == ["SKILL.md", "guide.md"]  # no vendored README
    assert result.replace_keys == {f"docs:{p}" for p in index}


def test_unchanged_changed_and_deleted_files(project: Path) -> None:
    collector = DocsCollector([project])
    cursors = DictCursors()
    first = cursors.apply(collector.collect(cursors))
    ids = {s.id for s in first.samples}

    again = cursors.apply(collector.collect(cursors))
    assert again.samples == [] and again.replace_keys == set() and again.cursors == {}
    assert dict(again.skipped) == {"unchanged": 2}

    guide = project / "docs" / "guide.md"
    guide.write_text(GUIDE.replace("rolled back at any time", "rolled back with one command"))
    changed = cursors.apply(collector.collect(cursors))
    assert changed.replace_keys == {f"docs:{guide}"}
    assert len(changed.samples) == 4 and dict(changed.skipped) == {"unchanged": 1}
    assert {s.id for s in changed.samples} <= ids  # same sections, same ids: updated in place
    assert "one command" in changed.samples[3].messages[1]["content"]

    skill = project / ".claude" / "skills" / "commit" / "SKILL.md"
    skill.unlink()
    deleted = cursors.apply(collector.collect(cursors))
    assert deleted.samples == [] and deleted.replace_keys == {f"docs:{skill}"}
    assert json.loads(cursors[f"docs:index:{project}"]) == [str(guide)]
    assert cursors[f"docs:{skill}"] == ""

    skill.write_text(SKILL)  # restored: read again
    assert len(cursors.apply(collector.collect(cursors)).samples) == 2


def test_paths_limit_the_pass_and_report_deletions(project: Path, tmp_path: Path) -> None:
    collector = DocsCollector([project])
    cursors = DictCursors()
    cursors.apply(collector.collect(cursors))
    guide = project / "docs" / "guide.md"
    guide.write_text(GUIDE + "\n## Appendix\n\nA closing section with enough words in it.\n")
    skill_dir = project / ".claude" / "skills" / "commit"
    (skill_dir / "SKILL.md").unlink()
    skill_dir.rmdir()

    result = collector.collect(cursors, paths=[guide, skill_dir, tmp_path / "elsewhere.md"])
    assert len(result.samples) == 5
    assert result.replace_keys == {f"docs:{guide}", f"docs:{skill_dir / 'SKILL.md'}"}
    assert dict(result.skipped) == {"outside_roots": 1}


def test_missing_root_keeps_its_samples(tmp_path: Path) -> None:
    gone = tmp_path / "unmounted"
    cursors = DictCursors({f"docs:index:{gone}": json.dumps([str(gone / "a.md")])})
    result = DocsCollector([gone]).collect(cursors)
    assert result.replace_keys == set() and dict(result.skipped) == {"missing_root": 1}


def test_long_skill_body_is_truncated(tmp_path: Path) -> None:
    body = "\n\n".join(f"Step {i}: " + "do the thing carefully " * 10 for i in range(10))
    (tmp_path / "SKILL.md").write_text(f"---\nname: big\n---\n{body}\n")
    result = DocsCollector([tmp_path], max_chunk_chars=600).collect(DictCursors())
    (skill,) = [s for s in result.samples if "skill_name" in s.meta]
    assert skill.messages[0]["content"] == "How do I use the big skill?"
    assert skill.messages[1]["content"].endswith(SKILL_TRUNCATED)
    assert skill.meta["truncated"] is True
