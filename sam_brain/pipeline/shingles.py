"""Text normalisation, shingle hashing and MinHash signatures: the math behind `dedup`.

A text is normalised (NFKC, lowercased, whitespace collapsed) and cut into word 5-gram shingles
(byte 5-grams for texts under ten words). Shingles are hashed with NumPy over a whole batch at
once (a 32-bit polynomial hash of each word from prefix sums, combined into mixed 64-bit 5-gram
hashes) and rensa computes the MinHash signatures in Rust, so no Python code runs per shingle.
Changing anything here changes `HASHING`, which makes saved indexes rebuild.
"""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from rensa import RMinHash

U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
I64 = npt.NDArray[np.int64]
Sig = npt.NDArray[np.uint32]

# Stored in the index file: an index hashed another way is rebuilt.
HASHING = f"poly32-5gram64-mulxor/rensa-r{RMinHash.ALGORITHM_VERSION}"
_SEED = 1
SHINGLE = 5  # words per shingle (bytes per shingle for short texts)
# Words are hashed in 32 bits (a third of the memory traffic of 64); 5-grams of them in 64.
_P = 0x01000193  # FNV-1's 32-bit prime: odd, so it has an inverse modulo 2**32
_P_INV = pow(_P, -1, 2**32)
MIX = np.uint64(0x9E3779B97F4A7C15)
_MIX_OUT = np.uint64(0xBF58476D1CE4E5B9)
CHUNK = 1 << 20  # bytes hashed per vectorised pass: bounds the temporary arrays (~50 MB)
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
    """P**i and P**-i modulo 2**32 for i < n (kept for the process up to twice `CHUNK`)."""
    global _powers
    if len(_powers[0]) >= n:
        return _powers
    size = max(n, min(2 * len(_powers[0]), 2 * CHUNK))
    fwd = np.full(size, _P, dtype=np.uint32)
    inv = np.full(size, _P_INV, dtype=np.uint32)
    fwd[0] = inv[0] = 1
    tables = (np.cumprod(fwd, dtype=np.uint32), np.cumprod(inv, dtype=np.uint32))
    if size <= 2 * CHUNK:  # one huge text must not pin hundreds of MB for good
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
    grams = words[:n] * MIX
    for j in range(1, SHINGLE):
        grams += words[j : j + n]
        if j < SHINGLE - 1:
            grams *= MIX
    return grams


def shingle_hashes(encoded: Sequence[bytes]) -> tuple[U64, I64]:
    """64-bit shingle hashes of normalised UTF-8 texts, grouped by text: `(hashes, offsets)`.

    Texts of ten or more words give their word 5-grams, shorter ones their byte 5-grams (a
    single shingle when under five bytes), empty ones nothing. Text `i`'s hashes are
    `hashes[offsets[i]:offsets[i + 1]]`. One text takes a shorter path with the same result.
    """
    if len(encoded) == 1:
        one = shingle_one(encoded[0])
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


def shingle_one(norm: bytes) -> U64:
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


def minhash(hashes: U64, offsets: I64, num_perm: int) -> Sig:
    """MinHash signatures, one row per text, of shingle hashes grouped as `shingle_hashes` gives.

    Args:
        hashes: the shingle hashes of every text, concatenated.
        offsets: text `i`'s hashes are `hashes[offsets[i]:offsets[i + 1]]`.
        num_perm: permutations, the signature length.

    Returns:
        A `(texts, num_perm)` uint32 matrix (a text without shingles gets an undefined row).
    """
    matrix = RMinHash.digest_matrix_from_flat_token_hashes(
        hashes, offsets.astype(np.uint64), num_perm, _SEED
    )
    if len(offsets) == 2:  # one text: the per-sample path, where this is measurably faster
        return np.array(matrix.to_rows(), dtype=np.uint32)
    count = (len(offsets) - 1) * num_perm
    values = itertools.chain.from_iterable(matrix.to_rows())
    return np.fromiter(values, dtype=np.uint32, count=count).reshape(-1, num_perm)
