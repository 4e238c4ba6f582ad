"""A group keeps one split across sources and batches: what is made from a held-out sample (a
teacher pair, a correction) is held out with it, and what is made from a training sample trains."""

from __future__ import annotations

from pathlib import Path

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.pipeline.ingest import store_result
from sam_brain.pipeline.split import assign_split
from sam_brain.protocols import CollectResult, Sample, stable_id


def doc_sample(group: str) -> Sample:
    return Sample(
        id=stable_id("docs", group),
        source="docs",
        source_key=group,
        group=group,
        messages=[
            {"role": "user", "content": f"How do I restart the {group} service safely?"},
            {"role": "assistant", "content": f"Run `make restart-{group}` and watch its log."},
        ],
    )


def pair_of(original: Sample) -> Sample:
    return Sample(
        id=stable_id("teacher", original.id),
        source="teacher",
        source_key=f"teacher:{original.id}",
        group=original.group,
        messages=original.messages[:1],
        kind="preference",
        chosen=f"Run the restart target for {original.group}, then check the log ends with OK.",
        rejected="I cannot help with that.",
    )


def first_group(docs_split: str, teacher_split: str) -> str:
    """A group whose own hash puts a docs sample and a teacher sample in different splits."""
    for i in range(100_000):
        g = f"g{i}"
        if assign_split(g, "docs") == docs_split and assign_split(g, "teacher") == teacher_split:
            return g
    raise AssertionError("no such group")


def test_samples_made_later_from_a_group_take_its_split(tmp_path: Path) -> None:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "home")}))
    held, trained = first_group("test", "train"), first_group("train", "test")
    originals = [doc_sample(held), doc_sample(trained)]
    store_result(home, "docs", CollectResult(samples=originals))
    report = store_result(home, "teacher", CollectResult(samples=[pair_of(s) for s in originals]))
    assert report.stored == 2
    splits = {(s.source, s.group): split for s, split in home.pool.samples()}
    assert splits == {
        ("docs", held): "test",
        ("teacher", held): "test",  # its own hash says train: it would leak the test prompt
        ("docs", trained): "train",
        ("teacher", trained): "train",  # its own hash says test: it would be lost to training
    }
    home.close()


def test_one_batch_with_two_sources_keeps_a_group_together(tmp_path: Path) -> None:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "home")}))
    group = first_group("val", "train")
    original = doc_sample(group)
    store_result(home, "mixed", CollectResult(samples=[original, pair_of(original)]))
    assert {split for _, split in home.pool.samples()} == {"val"}
    home.close()
