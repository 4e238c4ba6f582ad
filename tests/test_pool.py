from __future__ import annotations

import time
from pathlib import Path

from sam_brain.pool import Pool
from sam_brain.protocols import Sample, stable_id


def sample(key: str, n: int, text: str = "answer", ready_after: float = 0.0) -> Sample:
    return Sample(
        id=stable_id("test", key, str(n)),
        source="sessions",
        source_key=key,
        group=key,
        messages=[
            {"role": "user", "content": f"q{n}"},
            {"role": "assistant", "content": f"{text} {n}"},
        ],
        ready_after=ready_after,
    )


def test_reingest_updates_instead_of_duplicating(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    batch = [(sample("s1", i), "train") for i in range(3)]
    assert pool.upsert(batch, {"s1"})["inserted"] == 3
    first_seen = pool.existing([s.id for s, _ in batch])
    counts = pool.upsert([(sample("s1", i, "changed"), "train") for i in range(3)], {"s1"})
    assert counts == {"inserted": 0, "updated": 3, "deleted": 0}
    assert pool.count() == 3
    assert pool.existing([s.id for s, _ in batch]) == first_seen  # first_seen survives updates
    assert {s.messages[1]["content"] for s, _ in pool.samples()} == {
        f"changed {i}" for i in range(3)
    }


def test_replace_key_removes_vanished_samples_only_of_that_key(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    pool.upsert(
        [(sample("s1", i), "train") for i in range(3)] + [(sample("s2", 0), "val")], {"s1", "s2"}
    )
    v = pool.version
    counts = pool.upsert([(sample("s1", 0), "train")], {"s1"})
    assert counts["deleted"] == 2
    assert pool.count() == 2
    assert pool.version > v
    assert pool.stats()["by_split"] == {"train": 1, "val": 1}


def test_trainable_count_respects_quiet_period_and_since(tmp_path: Path) -> None:
    pool = Pool(tmp_path / "pool")
    future = time.time() + 600
    pool.upsert(
        [(sample("s1", 0), "train"), (sample("s1", 1, ready_after=future), "train")], {"s1"}
    )
    assert pool.trainable_count() == 1
    assert pool.trainable_count(since=time.time() + 1) == 0


def test_second_process_view_sees_commits(tmp_path: Path) -> None:
    a, b = Pool(tmp_path / "pool"), Pool(tmp_path / "pool")
    a.upsert([(sample("s1", 0), "train")], {"s1"})
    assert b.count() == 1


def test_stats_follow_the_clock_and_other_writers_through_the_cache(tmp_path: Path) -> None:
    a, b = Pool(tmp_path / "pool"), Pool(tmp_path / "pool")
    soon = time.time() + 1.0
    a.upsert([(sample("s1", 0), "train"), (sample("s1", 1, ready_after=soon), "val")], {"s1"})
    first = b.stats()
    assert (first["total"], first["trainable"]) == (2, 1)
    first["by_split"]["train"] = 99  # a caller's change must not leak into the cache
    time.sleep(max(0.0, soon - time.time()) + 0.05)
    second = b.stats()
    assert (second["total"], second["trainable"]) == (2, 2)  # no write, yet now due
    assert second["by_split"] == {"train": 1, "val": 1}
    a.upsert([(sample("s2", 0), "test")], {"s2"})  # another writer: a new pool version
    third = b.stats()
    assert third["pool_version"] > second["pool_version"]
    assert (third["total"], third["by_split"]["test"]) == (3, 1)
