"""The durable sample pool: one LanceDB table of samples with provenance, keyed by stable ids.

Writes are one `merge_insert` commit each (insert new ids, update known ones, delete replaced
ones), so a kill mid-write leaves the previous table version intact. Writers in different
processes (daemon, `samctl ingest`) serialise on a file lock. The table version is the "pool
version" a training run records. The filter SQL LanceDB takes is written here only: callers
ask through typed keywords (`samples(kind=, split=, ready_before=, source_keys=)`).
"""

from __future__ import annotations

import bisect
import fcntl
import json
import time
import warnings
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
import pyarrow.compute as pc

from sam_brain.errors import NotFound
from sam_brain.protocols import Sample

TABLE = "samples"
BATCH_ROWS = 2000  # rows per batch when the whole pool is scanned or rewritten
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("source_key", pa.string()),
        ("group", pa.string()),
        ("kind", pa.string()),
        ("strategy", pa.string()),
        ("tier", pa.string()),
        ("score", pa.float64()),
        ("split", pa.string()),
        ("ready_after", pa.float64()),
        ("first_seen", pa.float64()),
        ("updated_at", pa.float64()),
        ("data", pa.string()),  # the full Sample as JSON (messages, scores, meta, ...)
    ]
)


def _quote(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def where(
    *,
    kind: str | None = None,
    split: str | None = None,
    ready_before: float | None = None,
    source_keys: Collection[str] | None = None,
    first_seen_after: float | None = None,
) -> str | None:
    """The LanceDB filter for the given conditions (all must hold), or None for every row."""
    parts: list[str] = []
    if kind is not None:
        parts.append(f"kind = {_quote([kind])}")
    if split is not None:
        parts.append(f"split = {_quote([split])}")
    if ready_before is not None:
        parts.append(f"ready_after <= {float(ready_before)!r}")
    if first_seen_after is not None:
        parts.append(f"first_seen > {float(first_seen_after)!r}")
    if source_keys is not None:
        # An empty IN list is a syntax error; no key means no row.
        parts.append(f"source_key IN ({_quote(sorted(source_keys))})" if source_keys else "false")
    return " AND ".join(parts) or None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock shared by every process that writes this home's pool."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Pool:
    """The sample pool under `<data>/pool`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.lock_path = root / "write.lock"
        # Zero consistency interval: always see commits made by the other process.
        self._stats_cache: tuple[int, int, dict[str, dict[str, int]], list[float]] | None = None
        self._db = lancedb.connect(str(root), read_consistency_interval=timedelta(0))
        try:
            self._table = self._db.open_table(TABLE)
        except ValueError:  # not created yet; create under the lock so two processes agree
            with file_lock(self.lock_path):
                try:
                    self._table = self._db.open_table(TABLE)
                except ValueError:
                    self._table = self._db.create_table(TABLE, schema=SCHEMA)

    @property
    def version(self) -> int:
        return int(self._table.version)

    def _rows(
        self, where: str | None = None, columns: list[str] | None = None
    ) -> list[dict[str, Any]]:
        q = self._table.search()
        if where:
            q = q.where(where)
        if columns:
            q = q.select(columns)
        return list(q.limit(None).to_arrow().to_pylist())

    def existing(self, ids: Sequence[str]) -> dict[str, float]:
        """first_seen of the ids already in the pool."""
        out: dict[str, float] = {}
        for i in range(0, len(ids), 500):
            chunk = ids[i : i + 500]
            for row in self._rows(f"id IN ({_quote(chunk)})", ["id", "first_seen"]):
                out[row["id"]] = row["first_seen"]
        return out

    def upsert(
        self, samples: list[tuple[Sample, str]], replace_keys: set[str] | None = None
    ) -> dict[str, int]:
        """Store (sample, split) pairs; rows of `replace_keys` not in `samples` are deleted.

        Callers hold `file_lock(pool.lock_path)` around the read-check-write sequence.
        Returns counts: inserted, updated, deleted.
        """
        replace_keys = replace_keys or set()
        if not samples and not replace_keys:
            return {"inserted": 0, "updated": 0, "deleted": 0}
        now = time.time()
        seen = self.existing([s.id for s, _ in samples])
        rows = [
            {
                "id": s.id,
                "source": s.source,
                "source_key": s.source_key,
                "group": s.group,
                "kind": s.kind,
                "strategy": s.strategy,
                "tier": s.tier,
                "score": float(s.score),
                "split": split,
                "ready_after": float(s.ready_after),
                "first_seen": seen.get(s.id, now),
                "updated_at": now,
                "data": json.dumps(s.to_dict(), ensure_ascii=False, default=str),
            }
            for s, split in samples
        ]
        merge = (
            self._table.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
        )
        if replace_keys:
            merge = merge.when_not_matched_by_source_delete(
                f"source_key IN ({_quote(sorted(replace_keys))})"
            )
        table = pa.Table.from_pylist(rows, schema=SCHEMA)
        result = merge.execute(table)
        return {
            "inserted": int(result.num_inserted_rows),
            "updated": int(result.num_updated_rows),
            "deleted": int(result.num_deleted_rows),
        }

    def count(
        self,
        *,
        kind: str | None = None,
        split: str | None = None,
        ready_before: float | None = None,
        source_keys: Collection[str] | None = None,
    ) -> int:
        """Rows matching every given condition (see `samples`)."""
        cond = where(kind=kind, split=split, ready_before=ready_before, source_keys=source_keys)
        return int(self._table.count_rows(cond)) if cond else int(self._table.count_rows())

    def trainable_count(self, since: float = 0.0, now: float | None = None) -> int:
        """SFT samples that are past their quiet period and first seen after `since`."""
        now = time.time() if now is None else now
        cond = where(kind="sft", ready_before=now, first_seen_after=since)
        return int(self._table.count_rows(cond))

    def samples(
        self,
        *,
        kind: str | None = None,
        split: str | None = None,
        ready_before: float | None = None,
        source_keys: Collection[str] | None = None,
        first_seen_after: float | None = None,
    ) -> Iterator[tuple[Sample, str]]:
        """(sample, split) pairs in a stable order, matching every condition given.

        Args:
            kind: "sft" or "preference".
            split: "train", "val" or "test".
            ready_before: Only samples past their quiet period at this Unix time.
            source_keys: Only samples of these sources (an empty collection: none).
            first_seen_after: Only samples first seen after this Unix time.
        """
        cond = where(
            kind=kind,
            split=split,
            ready_before=ready_before,
            source_keys=source_keys,
            first_seen_after=first_seen_after,
        )
        rows = self._rows(cond, ["id", "split", "data"])
        rows.sort(key=lambda r: r["id"])
        for row in rows:
            yield Sample(**json.loads(row["data"])), row["split"]

    def group_splits(self, groups: Collection[str]) -> dict[str, str]:
        """The split each of these groups already has in the pool (groups not there are left out)."""
        out: dict[str, str] = {}
        ordered = sorted(set(groups))
        for i in range(0, len(ordered), 500):  # bounded IN lists
            cond = f"`group` IN ({_quote(ordered[i : i + 500])})"
            for row in self._rows(cond, ["group", "split"]):
                out[row["group"]] = row["split"]
        return out

    def source_keys(self, source: str) -> set[str]:
        """The distinct source keys (transcript paths, commits, ...) of one source's samples."""
        return {r["source_key"] for r in self._rows(f"source = {_quote([source])}", ["source_key"])}

    def get(self, sample_id: str) -> tuple[Sample, dict[str, Any]] | None:
        """One sample with its pool columns (split, first_seen, ...), or None."""
        rows = self._rows(f"id = {_quote([sample_id])}")
        if not rows:
            return None
        row = rows[0]
        sample = Sample(**json.loads(row.pop("data")))
        return sample, row

    def at_version(self, version: int) -> Pool:
        """A read-only view of the pool as it was at `version` (a training run's pinned data).

        Raises:
            NotFound: That version no longer exists (compacted or cleaned up).
        """
        view = Pool.__new__(Pool)
        view.root, view.lock_path, view._stats_cache = self.root, self.lock_path, None
        view._db = lancedb.connect(str(self.root))
        view._table = view._db.open_table(TABLE)
        try:
            view._table.checkout(version)
        except ValueError as err:
            raise NotFound(f"pool version {version} no longer exists ({err})") from err
        return view

    def stats(self) -> dict[str, Any]:
        """Counts by source, tier, split and kind; `trainable` is as of now.

        The scan is cached per pool version (`/api/self` asks many times a second while the pool
        changes once per ingest); only `trainable` depends on the clock, so the cache keeps the
        sorted `ready_after` of SFT rows and counts the ones already due.
        """
        version = self.version
        cached = self._stats_cache
        if cached is None or cached[0] != version:
            rows = self._rows(None, ["source", "tier", "split", "kind", "ready_after"])
            counts = {
                f"by_{col}": dict(Counter(r[col] for r in rows))
                for col in ("source", "tier", "split", "kind")
            }
            ready = sorted(r["ready_after"] for r in rows if r["kind"] == "sft")
            cached = self._stats_cache = (version, len(rows), counts, ready)
        _, total, counts, ready = cached
        return {
            "total": total,
            "trainable": bisect.bisect_right(ready, time.time()),
            "pool_version": version,
            **{name: dict(values) for name, values in counts.items()},
        }

    def set_splits(self, changes: dict[str, str]) -> None:
        """Move whole groups to another split (used only to guarantee a non-empty val split)."""
        for group, split in changes.items():
            g = group.replace("'", "''")
            self._table.update(where=f"`group` = '{g}'", values={"split": split})

    # --- removal and compaction (privacy: `samctl data forget`; housekeeping: `data compact`) ---

    def rows_with_data(self) -> Iterator[dict[str, Any]]:
        """Every row with its pool columns and `data` (the forget scan), a batch at a time."""
        for batch in self._batches():
            yield from batch.to_pylist()

    def _batches(self) -> Iterator[pa.RecordBatch]:
        for batch in self._table.search().limit(None).to_batches(batch_size=BATCH_ROWS):
            yield batch.select(SCHEMA.names)

    def count_ids_at(self, version: int, ids: Collection[str]) -> int | None:
        """How many of `ids` the pool held at `version` (None: that version was cleaned up)."""
        try:
            old = self._db.open_table(TABLE)
            old.checkout(version)
        except (ValueError, OSError, RuntimeError):
            return None
        found = 0
        chunk = sorted(ids)
        for i in range(0, len(chunk), 500):
            found += int(old.count_rows(f"id IN ({_quote(chunk[i : i + 500])})"))
        return found

    def purge(self, ids: Collection[str]) -> int:
        """Delete `ids` so that no file of the pool holds them any more; returns rows deleted.

        A LanceDB delete only marks rows (their bytes stay in the data file and in every older
        version), and compaction leaves fragments with few deletions alone; so the remaining
        rows are written as a new version (the version number keeps counting up) and every
        older version is cleaned up at once. Callers hold `file_lock(self.lock_path)`.
        """
        if not ids:
            return 0
        before = self.count()
        drop = pa.array(sorted(set(ids)), type=pa.string())

        def kept() -> Iterator[pa.RecordBatch]:
            for batch in self._batches():
                yield batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=drop)))

        # Streamed: the old version's files are read while the new one is written.
        reader = pa.RecordBatchReader.from_batches(SCHEMA, kept())
        self._table = self._db.create_table(TABLE, data=reader, schema=SCHEMA, mode="overwrite")
        self._cleanup(timedelta(0), unverified=True)
        self._stats_cache = None
        return before - self.count()

    def version_count(self) -> int:
        """Versions on disk (a directory listing: cheap enough to ask after every write)."""
        folder = self.root / f"{TABLE}.lance" / "_versions"
        return sum(1 for p in folder.glob("*.manifest")) if folder.is_dir() else 0

    def compact(self, keep_versions: int, keep_days: float, protect: Collection[int] = ()) -> int:
        """Merge small files and remove old versions; returns how many versions went.

        Kept: the newest `keep_versions`, every version younger than `keep_days`, and every
        version in `protect` and newer (what a running training reads). Callers hold the lock.
        """
        versions = sorted(self._table.list_versions(), key=lambda v: int(v["version"]))
        if len(versions) <= keep_versions:
            return 0
        stamps = {int(v["version"]): v["timestamp"] for v in versions}
        now = datetime.now(versions[-1]["timestamp"].tzinfo)
        keep_from = versions[-keep_versions]["timestamp"]
        for v in protect:
            if v in stamps:
                keep_from = min(keep_from, stamps[v])
        # The margin covers the time until LanceDB takes its own "now" for the cutoff.
        age = max(now - keep_from, timedelta(days=keep_days)) + timedelta(seconds=1)
        before = len(versions)
        self._cleanup(age, unverified=False)
        self._stats_cache = None
        return max(0, before + 1 - len(self._table.list_versions()))

    def _cleanup(self, older_than: timedelta, *, unverified: bool) -> None:
        with warnings.catch_warnings():
            # LanceDB warns that cleaning up to now breaks concurrent readers: we hold the lock.
            warnings.simplefilter("ignore", UserWarning)
            self._table.optimize(cleanup_older_than=older_than, delete_unverified=unverified)
