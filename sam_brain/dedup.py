"""Exact and near-duplicate detection against the whole pool, with an index persisted on disk.

A text is normalised (NFKC, lowercased, whitespace collapsed); its sha256 finds exact duplicates
and a MinHash of its word 5-gram shingles (byte 5-grams for texts under ten words) finds near
ones. Shingles are hashed with NumPy over the whole batch at once (a 32-bit polynomial hash of
each word from prefix sums, combined into mixed 64-bit 5-gram hashes) and rensa computes the
signatures in Rust, so no Python code runs per shingle; `prefetch` does this for a batch ahead
of its `check`/`add` calls. A banded LSH of our own (dicts of band hashes, bands chosen
for recall at the threshold) proposes candidates, which are confirmed by the Jaccard estimate
of the two signatures, so a hit is at or above the threshold. The file holds keys, digests and
signatures in a NumPy `.npz` archive (no pickle, so a damaged or foreign file cannot run code);
the band tables are rebuilt on open, or reused within the process while the file is unchanged.
Saving writes a temporary file, fsyncs it and renames it over the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import tempfile
import unicodedata
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from rensa import RMinHash

log = logging.getLogger(__name__)

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
Sig = npt.NDArray[np.uint32]
# (sha256 of the normalised text, MinHash signature or None when it has no shingles, band keys)
Fingerprint = tuple[bytes, Sig | None, list[int]]

# Opening re-inserts every signature into the band tables, so a long-running process keeps the
# last saved or loaded index per file and reuses it while the file is unchanged and the index
# holds no unsaved change.
_CACHE: dict[Path, tuple[tuple[int, int, int] | None, DedupIndex]] = {}

FORMAT_VERSION = 2  # bump when shingling or hashing changes: old files are then rebuilt
# Stored in the file: an index hashed another way is rebuilt.
HASHING = f"poly32-5gram64-mulxor/rensa-r{RMinHash.ALGORITHM_VERSION}"
SHINGLE = 5  # words per shingle (bytes per shingle for short texts)
_SEED = 1
# Words are hashed in 32 bits (a third of the memory traffic of 64); 5-grams of them in 64.
_P = 0x01000193  # FNV-1's 32-bit prime: odd, so it has an inverse modulo 2**32
_P_INV = pow(_P, -1, 2**32)
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX_OUT = np.uint64(0xBF58476D1CE4E5B9)
_CHUNK = 1 << 20  # bytes hashed per vectorised pass: bounds the temporary arrays (~50 MB)
_MEMO_MIN = 4096
_powers: tuple[U32, U32] = (np.ones(1, np.uint32), np.ones(1, np.uint32))


def normalize(text: str) -> str:
    """NFKC, lowercase, collapse whitespace: what both duplicate tests compare."""
    if not text.isascii():  # NFKC leaves ASCII unchanged; skipping it saves a pass
        text = unicodedata.normalize("NFKC", text)
    return " ".join(text.lower().split())


def _mix(x: U64) -> U64:
    """Multiply, then fold the high half into the low one (returns a new array).

    Every output bit then depends on every input bit, for three NumPy calls where splitmix64's
    finaliser takes eight.
    """
    x = x * _MIX_OUT
    x ^= x >> np.uint64(32)
    return x


def _power_tables(n: int) -> tuple[U32, U32]:
    """P**i and P**-i modulo 2**32 for i < n (kept for the process up to twice `_CHUNK`)."""
    global _powers
    if len(_powers[0]) >= n:
        return _powers
    size = max(n, min(2 * len(_powers[0]), 2 * _CHUNK))
    fwd = np.full(size, _P, dtype=np.uint32)
    inv = np.full(size, _P_INV, dtype=np.uint32)
    fwd[0] = inv[0] = 1
    tables = (np.cumprod(fwd, dtype=np.uint32), np.cumprod(inv, dtype=np.uint32))
    if size <= 2 * _CHUNK:  # one huge text must not pin hundreds of MB for good
        _powers = tables
    return tables


def _prefix(buf: npt.NDArray[np.uint8]) -> tuple[U32, U32]:
    """Prefix sums of a polynomial hash over `buf`, and the inverse powers that undo a shift.

    `(prefix[hi] - prefix[lo]) * inv[lo]` is then the hash of `buf[lo:hi]` wherever it sits.
    """
    fwd, inv = _power_tables(len(buf) + 1)
    weighted = np.multiply(buf, fwd[: len(buf)], dtype=np.uint32)
    weighted += fwd[: len(buf)]  # (byte + 1) * P**i: a NUL byte still counts
    prefix = np.zeros(len(buf) + 1, dtype=np.uint32)
    np.cumsum(weighted, out=prefix[1:])
    return prefix, inv


def _grams(words32: U32) -> U64:
    """Hashes of every run of `SHINGLE` consecutive word hashes (a polynomial in them)."""
    words = words32.astype(np.uint64)
    n = len(words) - SHINGLE + 1
    grams = words[:n] * _MIX
    for j in range(1, SHINGLE):
        grams += words[j : j + n]
        if j < SHINGLE - 1:
            grams *= _MIX
    return grams


def shingle_hashes(encoded: Sequence[bytes]) -> tuple[U64, I64]:
    """64-bit shingle hashes of normalised UTF-8 texts, grouped by text: `(hashes, offsets)`.

    Texts of ten or more words give their word 5-grams, shorter ones their byte 5-grams (a
    single shingle when under five bytes), empty ones nothing. Text `i`'s hashes are
    `hashes[offsets[i]:offsets[i + 1]]`. One text takes a shorter path with the same result.
    """
    if len(encoded) == 1:
        one = _shingle_one(encoded[0])
        return one, np.array([0, len(one)], dtype=np.int64)
    lens = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    buf = np.frombuffer(b" ".join(encoded), dtype=np.uint8)  # normalised texts hold no b"  "
    starts = np.cumsum(lens + 1) - lens - 1
    prefix, inv = _prefix(buf)
    spaces = np.flatnonzero(buf == 32)
    w_lo = np.concatenate(([0], spaces + 1))
    w_hi = np.concatenate((spaces, [len(buf)]))
    real = w_hi > w_lo  # an empty text leaves an empty "word" between two separators
    w_lo, w_hi = w_lo[real], w_hi[real]
    w_doc = np.searchsorted(starts, w_lo, side="right") - 1
    n_words = np.bincount(w_doc, minlength=len(encoded))
    parts: list[U64] = []
    part_docs: list[I64] = []
    if len(w_lo) >= SHINGLE:
        n = len(w_lo) - SHINGLE + 1
        grams = _grams((prefix[w_hi] - prefix[w_lo]) * inv[w_lo])
        ok = (w_doc[SHINGLE - 1 :] == w_doc[:n]) & (n_words[w_doc[:n]] >= 2 * SHINGLE)
        parts.append(grams[ok])
        part_docs.append(w_doc[:n][ok])
    short = np.flatnonzero((n_words < 2 * SHINGLE) & (lens > 0))
    if len(short):
        count = np.maximum(lens[short] - SHINGLE + 1, 1)
        first = np.repeat(np.cumsum(count) - count, count)
        lo = np.repeat(starts[short], count) + np.arange(int(count.sum())) - first
        hi = np.minimum(lo + SHINGLE, np.repeat(starts[short] + lens[short], count))
        parts.append(((prefix[hi] - prefix[lo]) * inv[lo]).astype(np.uint64))
        part_docs.append(np.repeat(short, count))
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    if not parts:
        return np.zeros(0, dtype=np.uint64), offsets
    docs = np.concatenate(part_docs)
    np.cumsum(np.bincount(docs, minlength=len(encoded)), out=offsets[1:])
    return _mix(np.concatenate(parts)[np.argsort(docs, kind="stable")]), offsets


def _shingle_one(norm: bytes) -> U64:
    """`shingle_hashes` of a single text, with about half the NumPy calls."""
    buf = np.frombuffer(norm, dtype=np.uint8)
    if not len(buf):
        return np.zeros(0, dtype=np.uint64)
    prefix, inv = _prefix(buf)
    spaces = np.flatnonzero(buf == 32)
    if len(spaces) + 1 >= 2 * SHINGLE:
        lo = np.concatenate(([0], spaces + 1))
        hi = np.concatenate((spaces, [len(buf)]))
        return _mix(_grams((prefix[hi] - prefix[lo]) * inv[lo]))
    lo = np.arange(max(len(buf) - SHINGLE + 1, 1))
    hi = np.minimum(lo + SHINGLE, len(buf))
    return _mix(((prefix[hi] - prefix[lo]) * inv[lo]).astype(np.uint64))


def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows): the longest bands that still propose 99% of pairs at the threshold."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= 0.99:
            return bands, rows
    return num_perm, 1


class DedupIndex:
    """Exact (sha256) and near (MinHash LSH) duplicate index over `key -> text`.

    Use `open` rather than the constructor. `needs_rebuild` is true when the file on disk was
    unreadable or built with another `num_perm` or hashing; the caller then passes every
    pooled `(key, text)` to `rebuild`. `prefetch` fingerprints a batch of texts in one
    vectorised pass, which makes the `check`/`add` calls that follow several times faster.
    """

    def __init__(self, path: Path, threshold: float = 0.85, num_perm: int = 128) -> None:
        self.path = Path(path)
        self.threshold = threshold
        self.num_perm = num_perm
        self.needs_rebuild = False
        self._bands, self._rows = _bands(threshold, num_perm)
        self._coef = np.cumprod(np.full(self._rows, _MIX, dtype=np.uint64))
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
        self._dirty = False

    @classmethod
    def open(cls, path: Path, threshold: float = 0.85, num_perm: int = 128) -> DedupIndex:
        """Load the index at `path`, or start empty if there is none (or it is damaged).

        Args:
            path: the index file; its parent directory is created on `save`.
            threshold: MinHash Jaccard similarity at or above which a text is a near duplicate.
            num_perm: MinHash permutations; an index saved with another value is discarded.
        """
        cached = _CACHE.get(Path(path).resolve())
        if cached is not None and cached[0] == _stamp(Path(path)):
            index = cached[1]
            if not index._dirty and (index.threshold, index.num_perm) == (threshold, num_perm):
                return index  # same file, same state: skip rebuilding the band tables
        index = cls(path, threshold, num_perm)
        if not index.path.exists():
            return index
        try:
            keys, digests, sigs = _read(index.path, num_perm)
        except _Outdated as err:  # sound, but hashed another way: the rebuild's save replaces it
            log.info("dedup index %s was built differently (%s): rebuilding it", path, err)
            index.needs_rebuild = True
            return index
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            aside = index.path.with_name(index.path.name + ".corrupt")
            log.warning(
                "dedup index %s is unusable (%s); kept as %s, starting empty: rebuild it",
                path,
                err,
                aside.name,
            )
            with contextlib.suppress(OSError):  # keep the evidence if we can, never fail on it
                index.path.replace(aside)
            index.needs_rebuild = True
            return index
        has_sig: npt.NDArray[np.bool_] = np.any(sigs != 0, axis=1)
        band_keys = index._band_keys(sigs[has_sig])
        rows = iter(band_keys.tolist())
        for key, digest, sig, signed in zip(keys, digests, sigs, has_sig.tolist(), strict=True):
            fp: Fingerprint = (
                (bytes(digest), sig, next(rows)) if signed else (bytes(digest), None, [])
            )
            index._insert(key, fp)
        index._dirty = False
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

    def check(self, key: str, text: str) -> str | None:
        """The key of an indexed text that duplicates `text`, or None.

        An exact duplicate wins over a near one; among near ones the most similar (then the
        smallest key) is returned. `key` itself is never reported, so re-checking a stored
        sample finds only other samples.
        """
        digest, sig, band_keys = self._fingerprint(text)
        exact = self._by_digest.get(digest)
        if exact and (len(exact) > 1 or key not in exact):
            return min(exact - {key})
        if sig is None:
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
        self._dirty = True

    def rebuild(self, items: Iterable[tuple[str, str]]) -> None:
        """Replace the whole index with `(key, text)` pairs (recovery from a damaged file)."""
        self._clear()
        pairs = list(items)
        for (key, _), fp in zip(pairs, self._fingerprints([t for _, t in pairs]), strict=True):
            if self._digest.get(key) != fp[0]:
                self.remove(key)
                self._insert(key, fp)
        self.needs_rebuild = False
        self._dirty = True

    def save(self) -> None:
        """Write the index atomically (temporary file, fsync, rename); skipped if unchanged."""
        self._memo.clear()
        if not self._dirty and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._digest)
        sigs = np.zeros((len(keys), self.num_perm), dtype=np.uint32)
        for i, key in enumerate(keys):
            if key in self._sig:
                sigs[i] = self._sig[key]
        meta = {"version": FORMAT_VERSION, "hashing": HASHING, "num_perm": self.num_perm}
        meta["keys"] = keys
        arrays: dict[str, np.ndarray[Any, Any]] = {
            "meta": np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
            "digests": np.frombuffer(b"".join(self._digest[k] for k in keys), dtype=np.uint8),
            "sigs": sigs,
        }
        fd, tmp = tempfile.mkstemp(prefix=self.path.name, suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
        self._dirty = False
        self._remember()

    def _remember(self) -> None:
        _CACHE[self.path.resolve()] = (_stamp(self.path), self)

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
        grams = _shingle_one(norm)
        if not len(grams):
            return digest, None, []
        offsets = np.array([0, len(grams)], dtype=np.uint64)
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(grams, offsets, self.num_perm, _SEED)
        sig: Sig = np.array(matrix.to_rows()[0], dtype=np.uint32)
        return digest, sig, self._band_keys(sig[None, :])[0].tolist()

    def _fingerprints(self, texts: Sequence[str]) -> list[Fingerprint]:
        """Digests, signatures and band keys of many texts, in chunks of about `_CHUNK` bytes."""
        out: list[Fingerprint] = []
        start = size = 0
        for i, text in enumerate(texts):
            size += len(text)
            if size >= _CHUNK or i == len(texts) - 1:
                chunk = texts[start : i + 1]
                out += self._fingerprint_chunk([normalize(t).encode("utf-8") for t in chunk])
                start, size = i + 1, 0
        return out

    def _fingerprint_chunk(self, norms: list[bytes]) -> list[Fingerprint]:
        hashes, offsets = shingle_hashes(norms)
        matrix = RMinHash.digest_matrix_from_flat_token_hashes(
            hashes, offsets.astype(np.uint64), self.num_perm, _SEED
        )
        values = itertools.chain.from_iterable(matrix.to_rows())
        sigs = np.fromiter(values, dtype=np.uint32, count=len(norms) * self.num_perm)
        sigs = sigs.reshape(len(norms), self.num_perm)
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
        self._dirty = True


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What identifies one version of the file on disk (None when there is no file)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def clear_cache() -> None:
    """Forget the in-process copies, so the next `open` reads the file (tests, tools)."""
    _CACHE.clear()


class _Outdated(ValueError):
    """A readable index file from another version or with another `num_perm`."""


def _read(path: Path, num_perm: int) -> tuple[list[str], np.ndarray[Any, Any], Sig]:
    """Load and validate an index file; raises ValueError when anything does not add up."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        digests = data["digests"].reshape(-1, 32)
        sigs = data["sigs"]
    if meta.get("version") != FORMAT_VERSION or meta.get("hashing") != HASHING:
        raise _Outdated(f"format {meta.get('version')!r} {meta.get('hashing')!r}, not {HASHING}")
    if meta.get("num_perm") != num_perm:
        raise _Outdated(f"built with num_perm={meta.get('num_perm')}, expected {num_perm}")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys are not a list of strings")
    if len(set(keys)) != len(keys) or not len(keys) == len(digests) == sigs.shape[0]:
        raise ValueError("keys, digests and signatures disagree")
    if sigs.ndim != 2 or sigs.shape[1] != num_perm or sigs.dtype != np.uint32:
        raise ValueError(f"signatures have shape {sigs.shape} and dtype {sigs.dtype}")
    return keys, digests, sigs
