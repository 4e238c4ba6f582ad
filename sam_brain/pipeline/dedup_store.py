"""The dedup index on disk: a NumPy snapshot plus an append-only journal of what changed since.

`<name>` is a `.npz` archive (no pickle, so a damaged or foreign file cannot run code) of keys,
sha256 digests and MinHash signatures, with a random generation id in its meta; it is written to
a temporary file, fsynced and renamed. `<name>.journal` starts with a checksummed header naming
the generation it extends, then holds records `add key digest signature` and `remove key`, each
length-prefixed and crc32-checked; every save appends its batch and a commit record, then
fsyncs. Opening replays the committed batches, so a save killed mid-write is ignored whole: its
torn tail is counted and logged, and the next save renames in a copy without it. Compaction writes a new snapshot
under a new generation, then deletes the journal; a crash between the two leaves a journal of
the old generation, which is skipped because its records are already in the new snapshot.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import struct
import time
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from sam_brain.fsutil import atomic_file, fsync_path
from sam_brain.pipeline.shingles import HASHING, Sig

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when shingling or hashing changes: old files are then rebuilt
# The journal is folded into a new snapshot once it holds more records than this fraction of
# the snapshot's keys (and at least COMPACT_MIN): opening then replays a bounded tail.
COMPACT_FRACTION = 0.25
COMPACT_MIN = 1000
MAGIC = b"SAMDJNL1"
_HEADER = struct.Struct("<8s16sI")  # magic, generation, crc32 of the two
_FRAME = struct.Struct("<II")  # payload length, crc32 of the payload
_ADD, _REMOVE, _COMMIT = b"A", b"R", b"C"
# What a damaged snapshot or journal raises while it is read: the caller rebuilds the index.
DAMAGED = (OSError, ValueError, KeyError, EOFError, struct.error, zipfile.BadZipFile)

Stamp = tuple[tuple[int, int, int] | None, tuple[int, int, int] | None]
Digests = npt.NDArray[np.uint8]
# key -> (sha256, signature with zeros for "none") to add it, or None to remove it
Change = tuple[bytes, bytes] | None


class Outdated(ValueError):
    """A readable index file from another version or with another `num_perm`."""


def journal_path(path: Path) -> Path:
    """The journal beside the snapshot at `path`."""
    return path.with_name(path.name + ".journal")


def stamp(path: Path) -> Stamp:
    """What identifies one state of the snapshot and its journal on disk (None: no such file)."""
    return _file_stamp(path), _file_stamp(journal_path(path))


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class IndexFiles:
    """The snapshot and journal of one index, and what this process last read or wrote of them.

    `load` reads both; then `append` (cheap: the changed keys only) or `compact` (the whole index)
    persists changes. `can_append` says whether appending is allowed: a snapshot of ours exists,
    nobody else wrote since, and the journal stays under the compaction threshold.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = journal_path(path)
        self.generation: bytes | None = None  # of the snapshot; None before one of ours is read
        self.base_len = 0  # keys in the snapshot
        self.journal_len = 0  # bytes of committed journal (0: no journal for this generation)
        self.journal_records = 0  # add/remove records in it
        self.torn_records = 0  # records of an unfinished save found at the journal's end
        self.torn_bytes = 0
        self.seen: Stamp = (None, None)  # the files as this process last read or wrote them

    def load(self, num_perm: int) -> tuple[list[str], Digests, Sig]:
        """Keys, digests and signatures of the snapshot with the committed journal applied.

        Raises:
            Outdated: the snapshot is sound but from another format, hashing or `num_perm`.
            Any of `DAMAGED`: a damaged snapshot or journal.
        """
        self.seen = stamp(self.path)  # before reading: a change made meanwhile forces a compaction
        keys, digests, sigs, generation = _read_snapshot(self.path, num_perm)
        self.base_len = len(keys)
        self.generation = generation
        if generation is None:  # written before journals existed: compacted on the next save
            return keys, digests, sigs
        changes = self._replay(num_perm)
        if not changes:
            return keys, digests, sigs
        keep = np.fromiter((k not in changes for k in keys), dtype=np.bool_, count=len(keys))
        added = [(k, c) for k, c in changes.items() if c is not None]
        new_digests = np.frombuffer(b"".join(c[0] for _, c in added), dtype=np.uint8)
        new_sigs = np.frombuffer(b"".join(c[1] for _, c in added), dtype="<u4")
        return (
            [k for k, kept in zip(keys, keep.tolist(), strict=True) if kept]
            + [k for k, _ in added],
            np.concatenate((digests[keep], new_digests.reshape(-1, 32))),
            np.concatenate((sigs[keep], new_sigs.astype(np.uint32).reshape(-1, num_perm))),
        )

    def _replay(self, num_perm: int) -> dict[str, Change]:
        """The net change of every committed journal batch; counts what a torn tail held."""
        try:
            data = self.journal.read_bytes()
        except FileNotFoundError:
            return {}
        # The header is written with the first batch through a rename, so it is never torn.
        if len(data) < _HEADER.size:
            raise ValueError(f"journal {self.journal.name} is shorter than its header")
        magic, generation, crc = _HEADER.unpack_from(data)
        if magic != MAGIC or crc != zlib.crc32(data[: _HEADER.size - 4]):
            raise ValueError(f"journal {self.journal.name} has no valid header")
        if generation != self.generation:
            log.info("dedup journal %s extends an older snapshot: skipped", self.journal.name)
            return {}
        changes: dict[str, Change] = {}
        batch: list[tuple[str, Change]] = []
        pos = committed = _HEADER.size
        records = 0
        view = memoryview(data)
        while pos + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            payload = view[pos + _FRAME.size : end]
            if end > len(data) or zlib.crc32(payload) != crc or not length:
                break  # a torn write: the rest is an unfinished save
            op = bytes(payload[:1])
            if op == _COMMIT:
                if struct.unpack_from("<I", payload, 1)[0] != len(batch):
                    raise ValueError(f"journal {self.journal.name}: commit count disagrees")
                changes.update(batch)
                records += len(batch)
                batch, committed = [], end
            else:
                batch.append(_decode(op, payload, num_perm))
            pos = end
        self.journal_len, self.journal_records = committed, records
        self.torn_bytes = len(data) - committed
        self.torn_records = len(batch) + (pos < len(data))
        if self.torn_bytes:
            log.warning(
                "dedup journal %s ends in an unfinished save (%d records, %d bytes): ignored",
                self.journal.name,
                self.torn_records,
                self.torn_bytes,
            )
        return changes

    def can_append(self, count: int) -> bool:
        """Whether `count` more records may go to the journal rather than into a new snapshot."""
        limit = max(COMPACT_MIN, COMPACT_FRACTION * self.base_len)
        return (
            self.generation is not None
            and self.journal_records + count <= limit
            and stamp(self.path) == self.seen
            and self.seen[0] is not None
        )

    def append(self, entries: Sequence[tuple[str, bytes | None, Sig | None]], num_perm: int) -> int:
        """Journal one save: `(key, digest, signature)` adds, `(key, None, None)` removes.

        The batch and its commit record are written and fsynced before this returns; a torn
        tail left by an earlier crash is cut off. Returns the bytes the journal grew by.
        """
        assert self.generation is not None, "append needs a snapshot: compact first"
        zeros = bytes(4 * num_perm)
        frames = [
            _frame(_encode(key, digest, sig.astype("<u4").tobytes() if sig is not None else zeros))
            for key, digest, sig in entries
        ]
        frames.append(_frame(_COMMIT + struct.pack("<I", len(entries))))
        batch = b"".join(frames)
        if self.journal_len and not self.torn_bytes:
            with self.journal.open("ab") as fh:
                fh.write(batch)
                fh.flush()
                os.fsync(fh.fileno())
            written = len(batch)
        else:
            # The first batch of this generation comes with the header, or (after a crash) the
            # committed part is copied without its torn tail: either way a new file is renamed
            # in, so no reader ever sees the same size and mtime for different contents.
            head = self._header()
            if self.journal_len:
                with self.journal.open("rb") as src:
                    head = src.read(self.journal_len)
            _write_atomic(self.journal, lambda fh: fh.write(head + batch))
            written = len(head) + len(batch) - self.journal_len
        self.journal_len += written
        self.journal_records += len(entries)
        self.torn_records = self.torn_bytes = 0
        self.seen = stamp(self.path)
        return written

    def _header(self) -> bytes:
        assert self.generation is not None
        return _HEADER.pack(MAGIC, self.generation, zlib.crc32(MAGIC + self.generation))

    def compact(self, keys: list[str], digests: bytes, sigs: Sig, num_perm: int) -> None:
        """Write the whole index as a new snapshot, then drop the journal it supersedes."""
        generation = os.urandom(16)
        meta = {"version": FORMAT_VERSION, "hashing": HASHING, "num_perm": num_perm}
        meta |= {"generation": generation.hex(), "keys": keys}
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "digests": np.frombuffer(digests, dtype=np.uint8),
            "sigs": sigs,
        }
        _write_atomic(self.path, lambda fh: np.savez(fh, allow_pickle=False, **arrays))
        # The snapshot is durable first: a crash now leaves a journal of the old generation,
        # which the next open skips.
        self.journal.unlink(missing_ok=True)
        fsync_path(self.path.parent)
        self.generation, self.base_len = generation, len(keys)
        self.journal_len = self.journal_records = self.torn_records = self.torn_bytes = 0
        self.seen = stamp(self.path)

    def set_aside(self) -> str:
        """Rename a damaged snapshot and its journal to `*.corrupt` (best effort); the new name."""
        self.generation = None  # nothing of the old files is appended to any more
        aside = self.path.with_name(self.path.name + ".corrupt")
        with contextlib.suppress(OSError):  # keep the evidence if we can, never fail on it
            self.path.replace(aside)
        with contextlib.suppress(OSError):
            self.journal.replace(self.journal.with_name(self.journal.name + ".corrupt"))
        return aside.name


def _encode(key: str, digest: bytes | None, sig: bytes) -> bytes:
    raw = key.encode("utf-8")
    head = struct.pack("<I", len(raw)) + raw
    return _REMOVE + head if digest is None else _ADD + head + digest + sig


def _decode(op: bytes, payload: memoryview, num_perm: int) -> tuple[str, Change]:
    """One add/remove record; a well-checksummed record that does not parse is damage."""
    (size,) = struct.unpack_from("<I", payload, 1)
    key = bytes(payload[5 : 5 + size]).decode("utf-8")
    rest = payload[5 + size :]
    if op == _REMOVE and not len(rest):
        return key, None
    if op == _ADD and len(rest) == 32 + 4 * num_perm:
        return key, (bytes(rest[:32]), bytes(rest[32:]))
    raise ValueError(f"journal record {op!r} for {key!r} is malformed")


def _frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def _write_atomic(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write a file through `fsutil.atomic_file`, first clearing temps a killed writer left."""
    _remove_stale_temps(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as fh:
        write(fh)


STALE_TEMP_SECONDS = 3600.0  # older than any save takes: left by a writer that was killed


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of `path` that a killed writer left behind (they can be large)."""
    cutoff = time.time() - STALE_TEMP_SECONDS
    for old in path.parent.glob(f"{glob.escape(path.name)}*.tmp*"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
                log.info("removed %s, left by an interrupted save", old)


def _read_snapshot(path: Path, num_perm: int) -> tuple[list[str], Digests, Sig, bytes | None]:
    """Load and validate a snapshot; raises ValueError when anything does not add up."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        digests = data["digests"].reshape(-1, 32)
        sigs = data["sigs"]
    if meta.get("version") != FORMAT_VERSION or meta.get("hashing") != HASHING:
        raise Outdated(f"format {meta.get('version')!r} {meta.get('hashing')!r}, not {HASHING}")
    if meta.get("num_perm") != num_perm:
        raise Outdated(f"built with num_perm={meta.get('num_perm')}, expected {num_perm}")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys are not a list of strings")
    if len(set(keys)) != len(keys) or not len(keys) == len(digests) == sigs.shape[0]:
        raise ValueError("keys, digests and signatures disagree")
    if sigs.ndim != 2 or sigs.shape[1] != num_perm or sigs.dtype != np.uint32:
        raise ValueError(f"signatures have shape {sigs.shape} and dtype {sigs.dtype}")
    generation = meta.get("generation")
    return keys, digests, sigs, bytes.fromhex(generation) if isinstance(generation, str) else None
