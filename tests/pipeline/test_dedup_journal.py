"""DedupIndex persistence: journal saves, torn tails, compaction, stale journals and kill -9.

Run as a script (`python tests/pipeline/test_dedup_journal.py INDEX START`), this file is the
child of the kill test: it applies `batch(i)` for i = START, START+1, ... and prints i after each
save.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from sam_brain.pipeline import dedup, dedup_store
from sam_brain.pipeline.dedup import DedupIndex

NUM_PERM = 128
HEADER = 8 + 16 + 4  # magic, generation, crc
COMMIT = 8 + 1 + 4  # frame, op, record count
WORDS = [f"word{i}" for i in range(40)]


def text_of(seed: int | str, n: int = 120) -> str:
    rng = random.Random(seed)
    return " ".join(f"{rng.choice(WORDS)}{rng.randint(0, 99)}" for _ in range(n))


def add_size(key: str) -> int:
    return 8 + 1 + 4 + len(key.encode()) + 32 + 4 * NUM_PERM


def remove_size(key: str) -> int:
    return 8 + 1 + 4 + len(key.encode())


def journal(path: Path) -> Path:
    return path.with_name(path.name + ".journal")


def probes(texts: dict[str, str]) -> list[str]:
    """Exact copies, one-word edits and unrelated texts, plus the empty text."""
    out = [""]
    for t in texts.values():
        words = t.split()
        if len(words) > 20:
            words[10] = "CHANGED"
        out += [t, " ".join(words)]
    return out + [text_of(f"unrelated{i}") for i in range(5)]


def answers(index: DedupIndex, texts: list[str]) -> list[str | None]:
    return [index.check(f"probe{i % 3}", t) for i, t in enumerate(texts)]


def reopen(path: Path) -> DedupIndex:
    dedup.clear_cache()  # read the files, not this process's copy
    index = DedupIndex.open(path)
    assert not index.needs_rebuild
    return index


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    dedup.clear_cache()


@pytest.fixture
def based(tmp_path: Path) -> tuple[Path, DedupIndex, dict[str, str]]:
    """An index of 40 texts saved as a snapshot."""
    path = tmp_path / "dedup.idx"
    texts = {f"k{i}": text_of(i) for i in range(40)}
    index = DedupIndex.open(path)
    index.rebuild(texts.items())
    index.save()
    assert not journal(path).exists()
    return path, index, texts


def test_a_save_writes_only_the_changed_keys(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path)
    index.rebuild((f"k{i}", text_of(i)) for i in range(400))
    index.save()
    snapshot = path.read_bytes()
    before = path.stat()
    sizes = []
    for round_ in range(3):
        keys = [f"new{round_}-{j}" for j in range(10)]
        for key in keys:
            index.add(key, text_of(key))
        wrote = _wchar()
        index.save()
        wrote = _wchar() - wrote
        sizes.append(journal(path).stat().st_size)
        batch = sum(add_size(k) for k in keys) + COMMIT
        assert sizes[-1] == (sizes[-2] if round_ else HEADER) + batch
        if wrote >= 0:  # Linux: bytes handed to write(2) by the whole save
            assert wrote == batch + (0 if round_ else HEADER)
    assert path.read_bytes() == snapshot and path.stat().st_ino == before.st_ino
    assert batch < len(snapshot) / 30  # 10 keys of 400+: O(changes), not O(index)
    assert len(reopen(path)) == 430


def _wchar() -> int:
    """Bytes this process has passed to write calls so far (-1 where /proc is missing)."""
    try:
        lines = Path("/proc/self/io").read_text().splitlines()
    except OSError:
        return -(10**18)
    return next(int(line.split()[1]) for line in lines if line.startswith("wchar:"))


def test_reopen_after_journal_saves_answers_the_same(
    based: tuple[Path, DedupIndex, dict[str, str]],
) -> None:
    path, index, texts = based
    inode = path.stat().st_ino
    steps: list[tuple[list[tuple[str, str]], list[str]]] = [
        ([("n1", text_of("n1")), ("n2", text_of("n2")), ("empty", "")], ["k3"]),
        ([("k5", text_of("k5 again")), ("n3", "fix typo in the readme")], ["n1", "missing"]),
        ([("n4", text_of("n4")), ("k3", text_of(3))], ["n4", "k7"]),  # n4 never reaches disk
        ([("n2", text_of("n2")), ("k8", text_of("k8 v2"))], []),  # a no-op and a replacement
    ]
    for adds, removes in steps:
        for key, text in adds:
            index.add(key, text)
            texts[key] = text
        for key in removes:
            index.remove(key)
            texts.pop(key, None)
        index.save()
        reopened = reopen(path)
        probe = probes(texts)
        assert answers(reopened, probe) == answers(index, probe)
        assert sorted(k for k in texts if k in reopened) == sorted(texts)
        assert len(reopened) == len(index) == len(texts)
    assert path.stat().st_ino == inode  # every save went to the journal
    assert reopened.check("x", text_of(7)) is None and reopened.check("x", text_of(3)) == "k3"


def test_removal_records_replay(based: tuple[Path, DedupIndex, dict[str, str]]) -> None:
    path, index, _ = based
    for key in ("k1", "k2", "k3"):
        index.remove(key)
    index.add("brief", text_of("brief"))
    index.remove("brief")  # added and removed before a save: only its removal is written
    index.save()
    removed = ["k1", "k2", "k3", "brief"]
    assert journal(path).stat().st_size == HEADER + sum(map(remove_size, removed)) + COMMIT
    reopened = reopen(path)
    assert len(reopened) == 37 and not any(k in reopened for k in removed)
    assert [reopened.check("x", text_of(i)) for i in range(5)] == [
        "k0",
        None,
        None,
        None,
        "k4",
    ]


@pytest.mark.parametrize(
    ("damage", "torn_records", "torn_bytes"),
    [
        (lambda data: data[:-100], 3, None),  # killed mid-record: 2 whole records, 1 partial
        (lambda data: data[:-COMMIT], 3, 3 * add_size("t0")),  # killed before the commit
        (lambda data: data + b"\x07" * 50, 1, 50),  # garbage after the last commit
        (lambda data: data + bytes(20), 1, 20),  # a zero-filled tail
    ],
    ids=["mid-record", "no-commit", "garbage", "zeros"],
)
def test_torn_tail_is_ignored_counted_and_cut_off(
    based: tuple[Path, DedupIndex, dict[str, str]],
    caplog: pytest.LogCaptureFixture,
    damage: object,
    torn_records: int,
    torn_bytes: int | None,
) -> None:
    path, index, _ = based
    index.add("s0", text_of("s0"))
    index.save()  # a committed batch that must survive
    committed = journal(path).stat().st_size
    for j in range(3):
        index.add(f"t{j}", text_of(f"t{j}"))
    index.save()
    data = journal(path).read_bytes()
    journal(path).write_bytes(damage(data))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="sam_brain.pipeline.dedup_store"):
        torn = reopen(path)
    last_batch_kept = len(damage(data)) > len(data)  # type: ignore[operator]
    assert torn.torn_records == torn_records
    assert "unfinished save" in caplog.text
    assert len(torn) == 41 + 3 * last_batch_kept and "s0" in torn
    assert all((f"t{j}" in torn) == last_batch_kept for j in range(3))
    if torn_bytes is not None:
        assert torn._files.torn_bytes == torn_bytes
    inode = journal(path).stat().st_ino
    torn.add("after", text_of("after"))
    torn.save()  # a copy without the tail, plus the new batch, is renamed in
    assert journal(path).stat().st_ino != inode
    end = (len(data) if last_batch_kept else committed) + add_size("after") + COMMIT
    assert journal(path).stat().st_size == end
    healed = reopen(path)
    assert healed.torn_records == 0 and "after" in healed and len(healed) == len(torn)


def test_compaction_at_the_threshold_reopens_identically(
    based: tuple[Path, DedupIndex, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, index, texts = based
    monkeypatch.setattr(dedup_store, "COMPACT_MIN", 10)  # 0.25 of 40 keys is 10 as well
    inode = path.stat().st_ino
    for round_ in range(3):
        for j in range(4):
            key = f"c{round_}-{j}"
            index.add(key, texts.setdefault(key, text_of(key)))
        index.save()
        if round_ < 2:  # 4, then 8 records: within the limit of 10
            assert path.stat().st_ino == inode and journal(path).exists()
    assert path.stat().st_ino != inode and not journal(path).exists()  # 12 > 10: compacted
    reopened = reopen(path)
    probe = probes(texts)
    assert answers(reopened, probe) == answers(index, probe) and len(reopened) == 52
    index.add("d", text_of("d"))
    index.save()  # a new journal extends the new snapshot (limit now 13)
    assert journal(path).exists() and len(reopen(path)) == 53


def test_stale_journal_from_a_crash_during_compaction_is_not_replayed(
    based: tuple[Path, DedupIndex, dict[str, str]],
) -> None:
    path, index, _ = based
    index.add("x", text_of("x"))
    index.remove("k0")
    index.save()
    stale = journal(path).read_bytes()
    index.rebuild([("k0", text_of(0)), ("y", text_of("y"))])
    index.save()  # new snapshot; the crash "happens" before the journal is deleted:
    journal(path).write_bytes(stale)
    reopened = reopen(path)
    assert sorted(k for k in ("k0", "k1", "x", "y") if k in reopened) == ["k0", "y"]
    assert len(reopened) == 2 and reopened.torn_records == 0
    reopened.add("z", text_of("z"))
    reopened.save()  # replaces the stale journal with one of this generation
    assert len(reopen(path)) == 3 and "z" in reopen(path)


def test_snapshot_from_before_journals_is_read_then_compacted(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    index = DedupIndex.open(path)
    index.rebuild([("a", text_of(1)), ("b", text_of(2))])
    index.save()
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays["meta"]).decode())
    del meta["generation"]  # what the whole-file saves wrote
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with path.open("wb") as fh:
        np.savez(fh, allow_pickle=False, **arrays)
    journal(path).write_bytes(b"left by a newer version")  # not ours to read: skipped
    old = reopen(path)
    assert len(old) == 2 and old.check("x", text_of(2)) == "b"
    inode = path.stat().st_ino
    old.add("c", text_of(3))
    old.save()  # no generation to extend: a new snapshot, and the journal goes
    assert path.stat().st_ino != inode and not journal(path).exists()
    assert len(reopen(path)) == 3


def _checksummed(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"NOTAJRNL" + data[8:],  # a header that is not ours
        lambda data: data[:HEADER],  # a header alone: fine
        lambda data: data + _checksummed(b"A\x01"),  # a well-checksummed record that is no record
        lambda data: data + _checksummed(b"C\x05\x00\x00\x00"),  # commits 5 of 0 records
        lambda data: data + _checksummed(b"Q\x01\x00\x00\x00k"),  # an unknown record kind
    ],
    ids=["header", "header-only", "short-record", "bad-commit", "unknown-op"],
)
def test_damaged_journal_sets_both_files_aside(
    based: tuple[Path, DedupIndex, dict[str, str]], damage: object
) -> None:
    path, index, _ = based
    index.add("x", text_of("x"))
    index.save()
    damaged = damage(journal(path).read_bytes())  # type: ignore[operator]
    journal(path).write_bytes(damaged)
    dedup.clear_cache()
    broken = DedupIndex.open(path)
    if len(damaged) == HEADER:  # not damage: no batch committed yet
        assert not broken.needs_rebuild and len(broken) == 40 and "x" not in broken
        return
    assert broken.needs_rebuild and len(broken) == 0
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["dedup.idx.corrupt", "dedup.idx.journal.corrupt"]


def test_cache_stamp_covers_the_journal(based: tuple[Path, DedupIndex, dict[str, str]]) -> None:
    path, index, _ = based
    index.add("x", text_of("x"))
    index.save()
    assert DedupIndex.open(path) is index  # journal saves keep the cache valid
    with journal(path).open("ab") as fh:
        fh.write(b"\x00")  # the journal changed on disk: the copy is stale
    assert DedupIndex.open(path) is not index


def test_a_writer_that_lost_the_race_rewrites_the_snapshot(
    based: tuple[Path, DedupIndex, dict[str, str]],
) -> None:
    path, first, _ = based
    dedup.clear_cache()
    second = DedupIndex.open(path)
    assert second is not first
    second.add("from-second", text_of("s"))
    second.save()  # journalled
    inode = path.stat().st_ino
    first.add("from-first", text_of("f"))
    first.save()  # the files changed since `first` read them: whole snapshot, last writer wins
    assert path.stat().st_ino != inode and not journal(path).exists()
    final = reopen(path)
    assert "from-first" in final and "from-second" not in final and len(final) == 41


# kill -9 in the middle of a save loop


def batch(i: int) -> tuple[list[tuple[str, str]], list[str]]:
    """Batch i of the kill test: 12 new texts, one replaced text and one removal."""
    adds = [(f"b{i}-{j}", text_of(f"b{i}-{j}", n=60)) for j in range(12)]
    if i >= 1:
        adds.append((f"b{i - 1}-1", text_of(f"b{i - 1}-1 v2", n=60)))
    return adds, [f"b{i - 2}-0"] if i >= 2 else []


def state_after(last: int) -> dict[str, str]:
    state: dict[str, str] = {}
    for i in range(last + 1):
        adds, removes = batch(i)
        state.update(adds)
        for key in removes:
            state.pop(key, None)
    return state


def _child(path: Path, start: int) -> None:
    dedup_store.COMPACT_MIN = 30  # compactions every few batches, so kills land in them too
    index = DedupIndex.open(path)
    assert not index.needs_rebuild
    for i in range(start, 10**6):
        adds, removes = batch(i)
        for key, text in adds:
            index.add(key, text)
        for key in removes:
            index.remove(key)
        index.save()
        print(i, flush=True)


@pytest.mark.slow
def test_kill_9_mid_save_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "dedup.idx"
    rng = random.Random(5)
    acked = -1
    for kill_at in (3, 9, 16, 24, 31):
        proc = subprocess.Popen(
            [sys.executable, __file__, str(path), str(acked + 1)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            acked = int(line)
            if acked >= kill_at:
                time.sleep(rng.uniform(0, 0.01))  # somewhere inside a later save
                os.kill(proc.pid, signal.SIGKILL)
                break
        acked = max([acked, *map(int, proc.stdout.read().split())])  # saves done meanwhile
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        index = reopen(path)
        universe = state_after(acked + 1).keys() | state_after(acked).keys()
        present = {k for k in universe if k in index}
        # every acknowledged save is there; the save under way is there whole or not at all
        options = {acked: state_after(acked), acked + 1: state_after(acked + 1)}
        done = next((i for i, s in options.items() if set(s) == present), None)
        assert done is not None, f"keys after a kill past batch {acked} match no save"
        assert len(index) == len(options[done])
        for key, text in options[done].items():
            assert index.check("probe", text) == key
        acked = done
    assert acked >= 31


if __name__ == "__main__":
    _child(Path(sys.argv[1]), int(sys.argv[2]))


def test_a_killed_writers_old_temp_file_is_removed_by_the_next_snapshot(tmp_path: Path) -> None:

    from sam_brain.pipeline import dedup_store

    path = tmp_path / "dedup.idx"
    stale = tmp_path / "dedup.idxab12.tmp"
    fresh = tmp_path / "dedup.idxcd34.tmp"  # may belong to a save running right now: kept
    for f in (stale, fresh):
        f.write_bytes(b"x" * 1000)
    old = time.time() - dedup_store.STALE_TEMP_SECONDS - 60
    os.utime(stale, (old, old))
    index = DedupIndex.open(path)
    index.add("a", "some text about lists and folders in python")
    index.rebuild([("a", "some text about lists and folders in python")])  # forces a snapshot
    index.save()
    assert not stale.exists()
    assert fresh.exists()
    assert DedupIndex.open(path).check("b", "some text about lists and folders in python") == "a"
