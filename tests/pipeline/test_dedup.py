"""DedupIndex: exact and near duplicates, updates, persistence, crash safety and recovery."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sam_brain.pipeline import dedup
from sam_brain.pipeline.dedup import DedupIndex

WORDS = [f"word{i}" for i in range(40)]


def text_of(seed: int, n: int = 200) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(n))


def edit(text: str, positions: range) -> str:
    words = text.split()
    for i in positions:
        words[i] = "CHANGED"
    return " ".join(words)


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    dedup.clear_cache()


@pytest.fixture
def index(tmp_path: Path) -> DedupIndex:
    return DedupIndex.open(tmp_path / "dedup.idx")


def test_exact_duplicate_after_normalisation(index: DedupIndex) -> None:
    index.add("a", "Fix the  flaky test\nin CI, please.")
    assert index.check("b", "fix the flaky TEST in ci, please.") == "a"
    assert index.check("a", "Fix the flaky test in CI, please.") is None  # never itself


def test_near_duplicate_above_threshold_is_found(index: DedupIndex) -> None:
    base = text_of(1)
    index.add("a", base)
    index.add("other", text_of(2))
    assert index.check("b", edit(base, range(100, 101))) == "a"  # one word of 200 changed


def test_clearly_different_text_is_not_flagged(index: DedupIndex) -> None:
    base = text_of(1)
    index.add("a", base)
    assert index.check("b", text_of(3)) is None
    assert index.check("b", edit(base, range(0, 200, 8))) is None  # 25 of 200 words changed


def test_short_texts_use_character_shingles(index: DedupIndex) -> None:
    index.add("a", "fix typo in the readme")
    assert index.check("b", "fix typo in the readme!") == "a"
    assert index.check("c", "add tests for the api") is None


def test_readding_is_a_noop_and_changed_text_replaces(index: DedupIndex) -> None:
    first, second = text_of(1), text_of(2)
    index.add("a", first)
    index.add("a", first)
    assert len(index) == 1
    index.add("a", second)
    assert len(index) == 1
    assert index.check("b", first) is None
    assert index.check("b", second) == "a"


def test_remove(index: DedupIndex) -> None:
    index.add("a", text_of(1))
    index.add("b", "short one")
    index.remove("a")
    index.remove("missing")  # ignored
    assert len(index) == 1 and "a" not in index
    assert index.check("x", text_of(1)) is None
    assert index.check("x", "short one") == "b"


def test_persistence_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dedup.idx"
    index = DedupIndex.open(path)
    for i in range(50):
        index.add(f"k{i}", text_of(i))
    index.add("empty", "")
    index.save()
    dedup.clear_cache()  # read the file, not this process's copy
    reopened = DedupIndex.open(path)
    assert len(reopened) == 51 and not reopened.needs_rebuild
    assert reopened.check("new", edit(text_of(7), range(3, 4))) == "k7"
    assert reopened.check("new", "") == "empty"
    reopened.remove("k7")
    reopened.save()
    dedup.clear_cache()
    assert DedupIndex.open(path).check("new", text_of(7)) is None
    # the removal went to the journal; no temporary files are left
    assert sorted(p.name for p in path.parent.iterdir()) == ["dedup.idx", "dedup.idx.journal"]


def test_threshold_change_keeps_the_signatures(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path, threshold=0.85)
    index.add("a", text_of(1))
    index.save()
    loose = DedupIndex.open(path, threshold=0.5)
    looser = edit(text_of(1), range(0, 200, 40))  # 5 words changed: Jaccard about 0.8
    assert index.check("b", looser) is None
    assert loose.check("b", looser) == "a"


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"not an index"),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated write
        lambda p: p.write_bytes(p.read_bytes()[:-200] + bytes(200)),  # corrupted tail
    ],
    ids=["garbage", "truncated", "corrupted"],
)
def test_damaged_file_starts_empty_and_rebuilds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: object
) -> None:
    path = tmp_path / "dedup.idx"
    items = [(f"k{i}", text_of(i)) for i in range(20)]
    index = DedupIndex.open(path)
    index.rebuild(items)
    index.save()
    damage(path)  # type: ignore[operator]
    dedup.clear_cache()  # a damaged tail can keep size and mtime: make sure the file is read
    with caplog.at_level(logging.WARNING, logger="sam_brain.pipeline.dedup"):
        broken = DedupIndex.open(path)
    assert len(broken) == 0 and broken.needs_rebuild
    assert "unusable" in caplog.text
    assert (tmp_path / "dedup.idx.corrupt").exists()
    broken.rebuild(items)
    broken.save()
    dedup.clear_cache()
    healed = DedupIndex.open(path)
    assert len(healed) == 20 and not healed.needs_rebuild
    assert healed.check("new", text_of(5)) == "k5"


def test_reopen_in_process_reuses_only_a_clean_unchanged_index(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path)
    index.add("a", text_of(1))
    index.save()
    assert DedupIndex.open(path) is index  # saved and unchanged: no LSH rebuild
    index.add("b", text_of(2))  # unsaved change: the file is the truth again
    fresh = DedupIndex.open(path)
    assert fresh is not index and len(fresh) == 1
    other = DedupIndex.open(path)
    other.add("c", text_of(3))
    other.save()  # the file changed under `fresh`
    assert len(DedupIndex.open(path)) == 2


def test_other_num_perm_is_discarded(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path, num_perm=64)
    index.add("a", text_of(1))
    index.save()
    other = DedupIndex.open(path, num_perm=128)
    assert len(other) == 0 and other.needs_rebuild
    assert not (tmp_path / "dedup.idx.corrupt").exists()  # outdated, not damaged
    other.rebuild([("a", text_of(1))])
    other.save()
    dedup.clear_cache()
    assert len(DedupIndex.open(path, num_perm=128)) == 1


def test_index_of_an_older_format_is_rebuilt_not_set_aside(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    meta = {"version": 1, "num_perm": 128, "keys": ["a"]}  # the datasketch-era layout
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        "digests": np.zeros(32, dtype=np.uint8),
        "sigs": np.ones((1, 128), dtype=np.uint32),
    }
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    old = DedupIndex.open(path)
    assert len(old) == 0 and old.needs_rebuild
    assert [p.name for p in tmp_path.iterdir()] == ["dedup.idx"]


def test_crash_during_snapshot_write_keeps_the_old_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path)
    index.add("a", text_of(1))
    index.save()
    index.add("b", text_of(2))
    index.save()  # journalled
    good = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert sorted(good) == ["dedup.idx", "dedup.idx.journal"]

    def crash(fh: object, **arrays: object) -> None:
        fh.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise OSError("disk full")

    index.rebuild([("c", text_of(3))])  # a rebuild always writes a new snapshot
    monkeypatch.setattr(np, "savez", crash)  # the process dies mid-write
    with pytest.raises(OSError, match="disk full"):
        index.save()
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == good
    dedup.clear_cache()
    reopened = DedupIndex.open(path)
    assert len(reopened) == 2 and "a" in reopened and "b" in reopened


def test_file_holds_no_pickle(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path)
    index.add("a", text_of(1))
    index.save()
    with np.load(path, allow_pickle=False) as data:  # would raise on object arrays
        assert sorted(data.files) == ["digests", "meta", "sigs"]


def test_throughput(tmp_path: Path) -> None:
    """Measured, not asserted: check + add per text, then save and reopen."""
    index = DedupIndex.open(tmp_path / "dedup.idx")
    texts = [text_of(i, n=300) for i in range(500)]
    start = time.process_time()
    dups = 0
    for i, text in enumerate(texts):
        dups += index.check(f"k{i}", text) is not None
        index.add(f"k{i}", text)
    spent = time.process_time() - start
    start = time.perf_counter()
    index.save()
    dedup.clear_cache()  # a cold open rebuilds the LSH tables
    reopened = DedupIndex.open(tmp_path / "dedup.idx")
    reload = time.perf_counter() - start
    print(f"dedup: {len(texts) / spent:.0f} texts/s (300 words each); save + cold open of "
          f"{len(texts)} keys {reload:.2f}s")  # fmt: skip
    assert dups == 0 and len(reopened) == 500


def test_prefetch_gives_the_fingerprints_of_one_at_a_time(tmp_path: Path) -> None:
    texts = [text_of(1), "", "   ", "fix typo", "fix typo in the readme now", text_of(2, n=12)]
    texts += ["Ünïcode  text\u3000with odd  spaces " * 3, "a b c d e f g h i j"]
    one = DedupIndex.open(tmp_path / "a.idx")
    many = DedupIndex.open(tmp_path / "b.idx")
    singles = [one._fingerprint_one(t) for t in texts]
    batch = many._fingerprints(texts)
    assert [one._fingerprints([t])[0][0] for t in texts] == [d for d, _, _ in batch]
    for (d1, s1, b1), (d2, s2, b2) in zip(singles, batch, strict=True):
        assert d1 == d2 and b1 == b2
        assert (s1 is None and s2 is None) or (
            s1 is not None and s2 is not None and (s1 == s2).all()
        )
    assert [s is None for _, s, _ in batch] == [
        False,
        True,
        True,
        False,
        False,
        False,
        False,
        False,
    ]


def test_prefetched_and_unprefetched_runs_agree(tmp_path: Path) -> None:
    base = [text_of(i) for i in range(40)]
    texts = base + [edit(t, range(50, 51)) for t in base[:10]] + base[:5]
    results = []
    for prefetch in (False, True):
        index = DedupIndex.open(tmp_path / f"{prefetch}.idx")
        if prefetch:
            index.prefetch(texts)
        found = []
        for i, text in enumerate(texts):
            found.append(index.check(f"k{i}", text))
            if found[-1] is None:
                index.add(f"k{i}", text)
        results.append(found)
    assert results[0] == results[1]
    assert results[0][40:] == [f"k{i}" for i in range(10)] + [f"k{i}" for i in range(5)]
    assert results[0][:40] == [None] * 40


def test_bands_propose_nearly_every_pair_at_the_threshold() -> None:
    for threshold in (0.5, 0.7, 0.85, 0.95):
        bands, rows = dedup._bands(threshold, 128)
        assert bands * rows <= 128
        assert 1 - (1 - threshold**rows) ** bands >= 0.99
    assert dedup._bands(0.85, 128) == (16, 8)


def test_remove_keeps_shared_buckets_for_the_other_keys(index: DedupIndex) -> None:
    index.add("a", text_of(1))
    index.add("b", edit(text_of(1), range(100, 101)))  # shares most band buckets with "a"
    index.add("c", text_of(2))
    index.remove("a")
    assert index.check("x", text_of(1)) == "b"
    index.remove("b")
    assert index.check("x", text_of(1)) is None
    index.remove("c")
    assert index._buckets == {} and len(index) == 0
