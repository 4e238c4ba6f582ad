"""Exact and near-duplicate detection against the whole pool, with an index persisted on disk.

A text is normalised (NFKC, lowercased, whitespace collapsed); its sha256 finds exact duplicates and
a datasketch MinHash of its word 5-gram shingles (character 5-grams for texts under ten words, as
crc32-based 32-bit hashes) finds near duplicates through MinHashLSH. LSH candidates are confirmed
by the Jaccard estimate of the two signatures, so a hit is at or above the threshold. The file
holds keys, digests and signatures in a NumPy `.npz` archive (no pickle, so a damaged or foreign
file cannot run code); the LSH tables are rebuilt on open, or reused within the process while the
file is unchanged. Saving writes a temporary file, fsyncs it and renames it over the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHash, MinHashLSH

log = logging.getLogger(__name__)
# Opening re-inserts every signature into MinHashLSH (about 0.1 ms per key), so a long-running
# process keeps the last saved or loaded index per file and reuses it while the file is unchanged
# and the index holds no unsaved change.
_CACHE: dict[Path, tuple[tuple[int, int, int] | None, DedupIndex]] = {}

FORMAT_VERSION = 1  # bump when shingling or hashing changes: old files are then rebuilt
SHINGLE = 5  # words per shingle (characters per shingle for short texts)
_SCHEME = "affine32"  # datasketch's default MinHash scheme; its hash values fit in uint32
_SEED = 1
_MIX = 0x9E3779B1  # odd multiplier combining word hashes into a 5-gram hash


def normalize(text: str) -> str:
    """NFKC, lowercase, collapse whitespace: what both duplicate tests compare."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def shingle_hashes(norm: str) -> list[int]:
    """32-bit hashes of the word 5-grams of a normalised text (character 5-grams under ten words).

    Words are hashed once with crc32 and each 5-gram hash is a polynomial of its words' hashes,
    computed with NumPy: about four times faster than hashing every joined 5-gram string.
    """
    words = re.findall(r"\w+", norm)
    if len(words) < 2 * SHINGLE:
        grams = {norm[i : i + SHINGLE] for i in range(max(len(norm) - SHINGLE + 1, 1))} - {""}
        return sorted(zlib.crc32(g.encode("utf-8")) for g in grams)
    vocab = {x: zlib.crc32(x.encode("utf-8")) for x in set(words)}  # words repeat: hash once
    w = np.array([vocab[x] for x in words], dtype=np.uint64)
    n = len(words) - SHINGLE + 1
    h = np.zeros(n, dtype=np.uint64)
    for j in range(SHINGLE):
        h = (h * np.uint64(_MIX) + w[j : j + n]) & np.uint64(0xFFFFFFFF)
    return [int(x) for x in np.unique(h)]


class DedupIndex:
    """Exact (sha256) and near (MinHash LSH) duplicate index over `key -> text`.

    Use `open` rather than the constructor. `needs_rebuild` is true when the file on disk was
    unreadable or built with another `num_perm`; the caller then passes every pooled
    `(key, text)` to `rebuild`.
    """

    def __init__(self, path: Path, threshold: float = 0.85, num_perm: int = 128) -> None:
        self.path = Path(path)
        self.threshold = threshold
        self.num_perm = num_perm
        self.needs_rebuild = False
        # The values fed in are already 32-bit shingle hashes (shingle_hashes), so hashfunc=int.
        self._template = MinHash(num_perm=num_perm, seed=_SEED, scheme=_SCHEME, hashfunc=int)
        self._clear()

    def _clear(self) -> None:
        self._lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        self._digest: dict[str, bytes] = {}  # key -> sha256 of the normalised text
        self._sig: dict[str, np.ndarray[Any, Any]] = {}  # key -> MinHash values (uint32)
        self._by_digest: dict[bytes, set[str]] = {}
        self._memo: tuple[str, bytes, np.ndarray[Any, Any] | None] | None = None
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
                return index  # same file, same state: skip rebuilding the LSH tables
        index = cls(path, threshold, num_perm)
        if not index.path.exists():
            return index
        try:
            keys, digests, sigs = _read(index.path, num_perm)
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
        for key, digest, sig in zip(keys, digests, sigs, strict=True):
            index._insert(key, bytes(digest), sig if sig.any() else None)
        index._dirty = False
        index._remember()
        return index

    def __len__(self) -> int:
        return len(self._digest)

    def __contains__(self, key: object) -> bool:
        return key in self._digest

    def check(self, key: str, text: str) -> str | None:
        """The key of an indexed text that duplicates `text`, or None.

        An exact duplicate wins over a near one; among near ones the most similar (then the
        smallest key) is returned. `key` itself is never reported, so re-checking a stored
        sample finds only other samples.
        """
        digest, sig = self._fingerprint(text)
        exact = self._by_digest.get(digest, set()) - {key}
        if exact:
            return min(exact)
        if sig is None:
            return None
        best: tuple[float, str] | None = None
        for other in self._lsh.query(self._minhash(sig)):
            if other == key:
                continue
            similarity = float(np.count_nonzero(self._sig[other] == sig)) / self.num_perm
            if similarity >= self.threshold and (best is None or (-similarity, other) < best):
                best = (-similarity, other)
        return best[1] if best else None

    def add(self, key: str, text: str) -> None:
        """Index `text` under `key`; the same text again is a no-op, a changed text replaces it."""
        digest, sig = self._fingerprint(text)
        if self._digest.get(key) == digest:
            return
        self.remove(key)
        self._insert(key, digest, sig)

    def remove(self, key: str) -> None:
        """Forget `key` (unknown keys are ignored)."""
        digest = self._digest.pop(key, None)
        if digest is None:
            return
        keys = self._by_digest[digest]
        keys.discard(key)
        if not keys:
            del self._by_digest[digest]
        if self._sig.pop(key, None) is not None:
            self._lsh.remove(key)
        self._dirty = True

    def rebuild(self, items: Iterable[tuple[str, str]]) -> None:
        """Replace the whole index with `(key, text)` pairs (recovery from a damaged file)."""
        self._clear()
        for key, text in items:
            self.add(key, text)
        self.needs_rebuild = False
        self._dirty = True

    def save(self) -> None:
        """Write the index atomically (temporary file, fsync, rename); skipped if unchanged."""
        if not self._dirty and self.path.exists():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._digest)
        sigs = np.zeros((len(keys), self.num_perm), dtype=np.uint32)
        for i, key in enumerate(keys):
            if key in self._sig:
                sigs[i] = self._sig[key]
        meta = {"version": FORMAT_VERSION, "num_perm": self.num_perm, "keys": keys}
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

    def _fingerprint(self, text: str) -> tuple[bytes, np.ndarray[Any, Any] | None]:
        # check() then add() of the same text is the common path: compute the MinHash once.
        if self._memo is not None and self._memo[0] == text:
            return self._memo[1], self._memo[2]
        norm = normalize(text)
        digest = hashlib.sha256(norm.encode("utf-8")).digest()
        grams = shingle_hashes(norm)
        sig: np.ndarray[Any, Any] | None = None
        if grams:
            m = self._template.copy()
            m.update_batch(grams)
            sig = np.asarray(m.hashvalues, dtype=np.uint32)
        self._memo = (text, digest, sig)
        return digest, sig

    def _minhash(self, sig: np.ndarray[Any, Any]) -> LeanMinHash:
        return LeanMinHash(seed=_SEED, hashvalues=sig, scheme=_SCHEME)

    def _insert(self, key: str, digest: bytes, sig: np.ndarray[Any, Any] | None) -> None:
        self._digest[key] = digest
        self._by_digest.setdefault(digest, set()).add(key)
        if sig is not None:  # an empty text has no shingles: exact matching only
            self._sig[key] = sig
            self._lsh.insert(key, self._minhash(sig), check_duplication=False)
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


def _read(
    path: Path, num_perm: int
) -> tuple[list[str], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Load and validate an index file; raises ValueError when anything does not add up."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        digests = data["digests"].reshape(-1, 32)
        sigs = data["sigs"]
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"format version {meta.get('version')!r}, expected {FORMAT_VERSION}")
    if meta.get("num_perm") != num_perm:
        raise ValueError(f"built with num_perm={meta.get('num_perm')}, expected {num_perm}")
    keys = meta.get("keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("keys are not a list of strings")
    if len(set(keys)) != len(keys) or not len(keys) == len(digests) == sigs.shape[0]:
        raise ValueError("keys, digests and signatures disagree")
    if sigs.ndim != 2 or sigs.shape[1] != num_perm or sigs.dtype != np.uint32:
        raise ValueError(f"signatures have shape {sigs.shape} and dtype {sigs.dtype}")
    return keys, digests, sigs
