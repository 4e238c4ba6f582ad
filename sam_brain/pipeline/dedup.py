"""Exact and near-duplicate detection against the whole pool, with an index persisted on disk.

A text is normalised; its sha256 finds exact duplicates and a MinHash of its shingles finds near
ones (`shingles.py` does the hashing, vectorised over a batch; `prefetch` runs it for a batch
ahead of its `check`/`add` calls). A banded LSH of our own (dicts of band hashes, bands chosen
for recall at the threshold) proposes candidates, which are confirmed by the Jaccard estimate
of the two signatures, so a hit is at or above the threshold. On disk (`dedup_store.py`) the
index is a snapshot plus a journal: a save appends only the keys changed since the last one and
fsyncs, and the journal is folded into a new snapshot once it grows past a fraction of it. The
band tables are rebuilt on open, or reused within the process while the files are unchanged.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import numpy as np

from sam_brain.pipeline import dedup_store
from sam_brain.pipeline.dedup_store import DAMAGED, IndexFiles, Outdated, Stamp
from sam_brain.pipeline.shingles import (
    CHUNK,
    MIX,
    U64,
    Sig,
    minhash,
    normalize,
    shingle_hashes,
    shingle_one,
)
from sam_brain.protocols import Sample

log = logging.getLogger(__name__)


def dedup_text(sample: Sample) -> str:
    """The text the index compares. A preference pair's words are tagged so it only ever matches
    other pairs: a pair and the SFT sample of the same prompt and answer teach different things."""
    text = sample.text()
    return " ".join("pref:" + w for w in text.split()) if sample.kind == "preference" else text


# (sha256 of the normalised text, MinHash signature or None when it has no shingles, band keys)
Fingerprint = tuple[bytes, Sig | None, list[int]]

# Opening re-inserts every signature into the band tables, so a long-running process keeps the
# last saved or loaded index per file and reuses it while the files are unchanged and the index
# holds no unsaved change.
_CACHE: dict[Path, tuple[Stamp, DedupIndex]] = {}
_MEMO_MIN = 4096


def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the longest bands that still propose 99% of pairs at the threshold."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1


class DedupIndex:
    """Exact (sha256) and near (MinHash LSH) duplicate index over `key -> text`.

    Use `open` rather than the constructor. `needs_rebuild` is true when the files on disk were
    unreadable or built with another `num_perm` or hashing; the caller then passes every
    pooled `(key, text)` to `rebuild`. `prefetch` fingerprints a batch of texts in one
    vectorised pass, which makes the `check`/`add` calls that follow several times faster.
    `torn_records` counts the records of an unfinished (killed) save ignored on open.
    """

    def __init__(self, path: Path, threshold: float = 0.85, num_perm: int = 128) -> None:
        self.path = Path(path)
        self.threshold = threshold
        self.num_perm = num_perm
        self.needs_rebuild = False
        self._files = IndexFiles(self.path)
        self._bands, self._rows = _bands(threshold, num_perm)
        self._coef = np.cumprod(np.full(self._rows, MIX, dtype=np.uint64))
        self._salt = np.arange(self._bands, dtype=np.uint64) * np.uint64(0xD6E8FEB86659FD93)
        self._clear()

    def _clear(self) -> None:
        # band key -> the key (or keys) whose signature has it; a lone key is kept bare, since
        # nearly every bucket holds one and a list per bucket would double the insert cost
        self._buckets: dict[int, str | list[str]] = {}
        self._digest: dict[str, bytes] = {}  # key -> sha256 of the normalised text
        self._sig: dict[str, Sig] = {}  # key -> MinHash values
        self._by_digest: dict[bytes, set[str]] = {}
        self._memo: dict[str, Fingerprint] = {}
        self._memo_cap = _MEMO_MIN
        self._pending: dict[str, None] = {}  # keys added or removed since the last save
        self._rewrite = False  # the whole index changed: the next save writes a snapshot

    @property
    def _dirty(self) -> bool:
        return self._rewrite or bool(self._pending)

    @property
    def torn_records(self) -> int:
        """Records of an unfinished save (a torn journal tail) ignored when the files were read."""
        return self._files.torn_records

    @classmethod
    def open(cls, path: Path, threshold: float = 0.85, num_perm: int = 128) -> DedupIndex:
        """Load the index at `path`, or start empty if there is none (or it is damaged).

        Args:
            path: the index snapshot; its journal sits beside it as `<name>.journal`, and its
                parent directory is created on `save`.
            threshold: MinHash Jaccard similarity at or above which a text is a near duplicate.
            num_perm: MinHash permutations; an index saved with another value is discarded.
        """
        cached = _CACHE.get(Path(path).resolve())
        if cached is not None and cached[0] == dedup_store.stamp(Path(path)):
            index = cached[1]
            if not index._dirty and (index.threshold, index.num_perm) == (threshold, num_perm):
                return index  # same files, same state: skip rebuilding the band tables
        index = cls(path, threshold, num_perm)
        if not index.path.exists():
            return index
        try:
            keys, digests, sigs = index._files.load(num_perm)
        except Outdated as err:  # sound, but hashed another way: the rebuild's save replaces it
            log.info("dedup index %s was built differently (%s): rebuilding it", path, err)
            index.needs_rebuild = True
            return index
        except DAMAGED as err:
            aside = index._files.set_aside()
            log.warning(
                "dedup index %s is unusable (%s); kept as %s, starting empty: rebuild it",
                path,
                err,
                aside,
            )
            index.needs_rebuild = True
            return index
        has_sig = np.any(sigs != 0, axis=1)
        band_keys = index._band_keys(sigs[has_sig])
        rows = iter(band_keys.tolist())
        for key, digest, sig, signed in zip(keys, digests, sigs, has_sig.tolist(), strict=True):
            fp: Fingerprint = (
                (bytes(digest), sig, next(rows)) if signed else (bytes(digest), None, [])
            )
            index._insert(key, fp)
        index._remember()
        return index

    def __len__(self) -> int:
        return len(self._digest)

    def __contains__(self, key: object) -> bool:
        return key in self._digest

    def prefetch(self, texts: Iterable[str]) -> None:
        """Fingerprint texts about to be checked or added, all in one vectorised pass."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._memo))
        self._memo_cap = len(self._memo) + len(todo) + _MEMO_MIN
        self._memo.update(zip(todo, self._fingerprints(todo), strict=True))

    def check(self, key: str, text: str, near: bool = True) -> str | None:
        """The key of an indexed text that duplicates `text`, or None.

        An exact duplicate wins over a near one; among near ones the most similar (then the
        smallest key) is returned. `key` itself is never reported, so re-checking a stored
        sample finds only other samples. `near=False` looks for exact duplicates only.
        """
        digest, sig, band_keys = self._fingerprint(text)
        exact = self._by_digest.get(digest)
        if exact and (len(exact) > 1 or key not in exact):
            return min(exact - {key})
        if sig is None or not near:
            return None
        candidates: set[str] = set()
        buckets = self._buckets
        for band in band_keys:
            if (hit := buckets.get(band)) is not None:
                if isinstance(hit, str):
                    candidates.add(hit)
                else:
                    candidates.update(hit)
        candidates.discard(key)
        best: tuple[float, str] | None = None
        for other in candidates:
            similarity = float(np.count_nonzero(self._sig[other] == sig)) / self.num_perm
            if similarity >= self.threshold and (best is None or (-similarity, other) < best):
                best = (-similarity, other)
        return best[1] if best else None

    def add(self, key: str, text: str) -> None:
        """Index `text` under `key`; the same text again is a no-op, a changed text replaces it."""
        fp = self._fingerprint(text)
        self._memo.pop(text, None)  # check() then add() is the common path: done with it now
        if self._digest.get(key) == fp[0]:
            return
        self.remove(key)
        self._insert(key, fp)
        self._pending[key] = None

    def remove(self, key: str) -> None:
        """Forget `key` (unknown keys are ignored)."""
        digest = self._digest.pop(key, None)
        if digest is None:
            return
        keys = self._by_digest[digest]
        keys.discard(key)
        if not keys:
            del self._by_digest[digest]
        sig = self._sig.pop(key, None)
        if sig is not None:
            for band in self._band_keys(sig[None, :])[0].tolist():
                bucket = self._buckets.get(band)
                if bucket == key:
                    del self._buckets[band]
                elif isinstance(bucket, list) and key in bucket:
                    bucket.remove(key)
                    if len(bucket) == 1:
                        self._buckets[band] = bucket[0]
        self._pending[key] = None

    def rebuild(self, items: Iterable[tuple[str, str]]) -> None:
        """Replace the whole index with `(key, text)` pairs (recovery from a damaged file)."""
        self._clear()
        pairs = list(items)
        for (key, _), fp in zip(pairs, self._fingerprints([t for _, t in pairs]), strict=True):
            if self._digest.get(key) != fp[0]:
                self.remove(key)
                self._insert(key, fp)
        self.needs_rebuild = False
        self._rewrite = True

    def snapshot_on_save(self) -> None:
        """Make the next save write a whole new snapshot and drop the journal (after a forget,
        so no journal record of a removed key stays on disk)."""
        self._rewrite = True

    def save(self) -> None:
        """Persist the changes since the last save durably; skipped if there are none.

        Usually this appends the changed keys to the journal and fsyncs it. It writes a whole
        new snapshot instead (temporary file, fsync, rename) after `rebuild`, when there is no
        snapshot of ours yet, when another writer changed the files since this index read them
        (the last writer wins, as with whole-file saves), or when the journal would outgrow
        `dedup_store.COMPACT_FRACTION` of the snapshot.
        """
        self._memo.clear()
        if not self._dirty and self.path.exists():
            return
        files = self._files
        if not self._rewrite and files.can_append(len(self._pending)):
            entries = [(k, self._digest.get(k), self._sig.get(k)) for k in self._pending]
            files.append(entries, self.num_perm)
        else:
            keys = list(self._digest)
            sigs = np.zeros((len(keys), self.num_perm), dtype=np.uint32)
            for i, key in enumerate(keys):
                if key in self._sig:
                    sigs[i] = self._sig[key]
            digests = b"".join(self._digest[k] for k in keys)
            files.compact(keys, digests, sigs, self.num_perm)
        self._pending.clear()
        self._rewrite = False
        self._remember()

    def _remember(self) -> None:
        _CACHE[self.path.resolve()] = (self._files.seen, self)

    def _fingerprint(self, text: str) -> Fingerprint:
        fp = self._memo.get(text)
        if fp is None:
            if len(self._memo) >= self._memo_cap:
                self._memo.clear()  # texts checked but never added: do not keep them forever
            fp = self._memo[text] = self._fingerprint_one(text)
        return fp

    def _fingerprint_one(self, text: str) -> Fingerprint:
        """`_fingerprints([text])[0]` with fewer NumPy calls (the per-sample path)."""
        norm = normalize(text).encode("utf-8")
        digest = hashlib.sha256(norm).digest()
        grams = shingle_one(norm)
        if not len(grams):
            return digest, None, []
        sig = minhash(grams, np.array([0, len(grams)], dtype=np.int64), self.num_perm)[0]
        return digest, sig, self._band_keys(sig[None, :])[0].tolist()

    def _fingerprints(self, texts: Sequence[str]) -> list[Fingerprint]:
        """Digests, signatures and band keys of many texts, in chunks of about `CHUNK` bytes."""
        out: list[Fingerprint] = []
        start = size = 0
        for i, text in enumerate(texts):
            size += len(text)
            if size >= CHUNK or i == len(texts) - 1:
                chunk = texts[start : i + 1]
                out += self._fingerprint_chunk([normalize(t).encode("utf-8") for t in chunk])
                start, size = i + 1, 0
        return out

    def _fingerprint_chunk(self, norms: list[bytes]) -> list[Fingerprint]:
        hashes, offsets = shingle_hashes(norms)
        sigs = minhash(hashes, offsets, self.num_perm)
        band_keys = self._band_keys(sigs).tolist()
        signed = (offsets[1:] > offsets[:-1]).tolist()
        return [
            (hashlib.sha256(norm).digest(), sig, bk) if ok else
            (hashlib.sha256(norm).digest(), None, [])
            for norm, sig, bk, ok in zip(norms, sigs, band_keys, signed, strict=True)
        ]  # fmt: skip

    def _band_keys(self, sigs: Sig) -> U64:
        """One 64-bit key per (signature, band): a polynomial of its values plus the band number."""
        cols = sigs[:, : self._bands * self._rows].reshape(len(sigs), self._bands, self._rows)
        keys = cast(U64, cols.astype(np.uint64) @ self._coef)  # integer matmul wraps mod 2**64
        return keys + self._salt

    def _insert(self, key: str, fp: Fingerprint) -> None:
        digest, sig, band_keys = fp
        self._digest[key] = digest
        self._by_digest.setdefault(digest, set()).add(key)
        if sig is not None:  # an empty text has no shingles: exact matching only
            self._sig[key] = sig
            buckets = self._buckets
            for band in band_keys:
                held = buckets.setdefault(band, key)
                if held is not key:
                    if isinstance(held, str):
                        buckets[band] = [held, key]
                    else:
                        held.append(key)


def clear_cache() -> None:
    """Forget the in-process copies, so the next `open` reads the files (tests, tools)."""
    _CACHE.clear()
