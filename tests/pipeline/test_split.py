"""Split assignment: deterministic, one split per group, stable as the pool grows, stratified."""

from __future__ import annotations

from collections import Counter

import pytest

from sam_brain.pipeline.split import (
    SPLITS,
    assign_split,
    ensure_nonempty,
    format_split_counts,
    split_counts,
    unit_hash,
)


def test_deterministic_and_one_split_per_group() -> None:
    first = [assign_split(f"session-{i}", "sessions:A") for i in range(500)]
    again = [assign_split(f"session-{i}", "sessions:A") for i in range(500)]
    assert first == again
    assert set(first) == set(SPLITS)
    # Every sample of a group asks with the same group and stratum, so gets the same answer.
    samples = [("session-7", n) for n in range(20)]
    assert len({assign_split(group, "sessions:A") for group, _ in samples}) == 1


def test_seed_changes_assignments_but_stays_deterministic() -> None:
    a = [assign_split(f"g{i}", "s", seed=0) for i in range(300)]
    b = [assign_split(f"g{i}", "s", seed=1) for i in range(300)]
    assert a != b
    assert b == [assign_split(f"g{i}", "s", seed=1) for i in range(300)]


def test_proportions_over_10k_groups() -> None:
    counts = Counter(assign_split(f"g{i}", "sessions:B") for i in range(10_000))
    assert abs(counts["train"] / 10_000 - 0.90) < 0.012
    assert abs(counts["val"] / 10_000 - 0.05) < 0.01
    assert abs(counts["test"] / 10_000 - 0.05) < 0.01
    custom = Counter(assign_split(f"g{i}", "s", (0.6, 0.2, 0.2)) for i in range(10_000))
    assert abs(custom["val"] / 10_000 - 0.2) < 0.02


def test_stable_as_the_pool_grows() -> None:
    small = {f"g{i}": assign_split(f"g{i}", "git:B") for i in range(1_000)}
    grown = {f"g{i}": assign_split(f"g{i}", "git:B") for i in range(5_000)}
    assert all(grown[g] == split for g, split in small.items())


def test_stratification_each_stratum_gets_the_shares() -> None:
    strata = ["sessions:A", "sessions:B", "git:B", "distill:A"]
    rows = [(s, assign_split(f"g{i}", s)) for s in strata for i in range(4_000)]
    counts = split_counts(rows)
    assert set(counts) == {*strata, "*"}
    for stratum in strata:
        c = counts[stratum]
        assert sum(c.values()) == 4_000
        assert abs(c["val"] / 4_000 - 0.05) < 0.015
        assert abs(c["test"] / 4_000 - 0.05) < 0.015
    assert sum(counts["*"].values()) == 16_000
    # The stratum salts the hash: the same group id draws independently in each stratum.
    same = sum(assign_split(f"g{i}", "git:B") == assign_split(f"g{i}", "sessions:A")
               for i in range(2_000))  # fmt: skip
    assert same < 2_000 * 0.95
    table = format_split_counts(counts)
    assert table.splitlines()[0].split()[:4] == ["stratum", "train", "val", "test"]
    assert len(table.splitlines()) == 6


def test_unit_hash_is_in_unit_interval_and_spread() -> None:
    points = [unit_hash("x", str(i)) for i in range(2_000)]
    assert all(0.0 <= p < 1.0 for p in points)
    assert abs(sum(points) / len(points) - 0.5) < 0.03


def test_bad_shares_are_refused() -> None:
    with pytest.raises(ValueError, match="shares"):
        assign_split("g", "s", (0.9, 0.2, 0.1))
    with pytest.raises(ValueError, match="shares"):
        assign_split("g", "s", (1.1, -0.05, -0.05))


def test_ensure_nonempty_moves_one_group_into_val() -> None:
    both_train = {"a": "train", "b": "train", "c": "train"}
    fixed = ensure_nonempty(both_train)
    assert Counter(fixed.values()) == {"train": 2, "val": 1}
    assert both_train == {"a": "train", "b": "train", "c": "train"}  # input untouched
    assert ensure_nonempty(both_train) == fixed  # deterministic
    moved = next(g for g, s in fixed.items() if s == "val")
    assert moved == min(both_train, key=lambda g: unit_hash("val", g))
    # Train is never emptied: with one train group the test group moves.
    assert ensure_nonempty({"a": "train", "b": "test"}) == {"a": "train", "b": "val"}
    assert Counter(ensure_nonempty({"a": "test", "b": "test"}).values()) == {"test": 1, "val": 1}


def test_ensure_nonempty_leaves_pools_alone_when_not_needed() -> None:
    assert ensure_nonempty({"a": "train"}) == {"a": "train"}
    assert ensure_nonempty({}) == {}
    has_val = {"a": "train", "b": "val", "c": "train"}
    assert ensure_nonempty(has_val) == has_val


def test_tiny_pool_still_validates() -> None:
    for n in range(2, 20):
        groups = {f"s{i}": assign_split(f"s{i}", "sessions:A") for i in range(n)}
        fixed = ensure_nonempty(groups)
        assert "val" in fixed.values() and "train" in fixed.values()
        assert sum(fixed[g] != groups[g] for g in groups) <= 1
