"""Paired significance tests on per-sample losses: the exact sign test and Wilcoxon signed-rank.

The evaluation gate (`deployment.evaluate`) compares a candidate's per-sample losses with the
reference's on the same test rows. Both tests are implemented exactly here (Python integers for the
sign test, the permutation distribution of W+ on doubled ranks for Wilcoxon), with a normal
approximation with tie and continuity correction for large samples, so the daemon does not need
scipy. `compare` runs both and returns a `Comparison`; every p-value is one-sided.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sam_brain.errors import BadRequest

EXACT_LIMIT = 200  # Wilcoxon: exact distribution up to this many non-zero differences


@dataclass
class Comparison:
    """Paired candidate-minus-reference loss differences and their tests (p: one-sided)."""

    reference: str
    n: int
    mean_diff: float
    better: int
    worse: int
    ties: int
    sign_p_worse: float
    sign_p_better: float
    wilcoxon_p_worse: float
    wilcoxon_p_better: float


def sign_test(diffs: Sequence[float]) -> tuple[float, float]:
    """Exact paired sign test on candidate-minus-reference differences (zeros dropped).

    Returns:
        `(p_worse, p_better)`: one-sided p-values that the candidate is worse / better.
    """
    worse = sum(1 for d in diffs if d > 0)
    n = worse + sum(1 for d in diffs if d < 0)
    if n == 0:
        return 1.0, 1.0
    # Python ints divide exactly, so large n cannot overflow 2**n.
    upper = sum(math.comb(n, i) for i in range(worse, n + 1)) / 2**n
    lower = sum(math.comb(n, i) for i in range(0, worse + 1)) / 2**n
    return min(1.0, upper), min(1.0, lower)


def wilcoxon_signed_rank(diffs: Sequence[float]) -> tuple[float, float]:
    """Paired Wilcoxon signed-rank test (zeros dropped, ties get average ranks).

    Exact permutation distribution of W+ for up to `EXACT_LIMIT` non-zero differences (ties are
    handled exactly on doubled ranks), normal approximation with tie and continuity correction
    beyond.

    Returns:
        `(p_worse, p_better)`: one-sided p-values that the candidate is worse / better.
    """
    nonzero = np.asarray([d for d in diffs if d != 0], dtype=np.float64)
    n = len(nonzero)
    if n == 0:
        return 1.0, 1.0
    ranks = _average_ranks(np.abs(nonzero))
    w_plus = float(ranks[nonzero > 0].sum())
    if n <= EXACT_LIMIT:
        doubled = np.rint(ranks * 2).astype(np.int64)
        dist = np.zeros(int(doubled.sum()) + 1)
        dist[0] = 1.0
        for r in doubled:  # each rank joins W+ with probability 1/2 (r >= 2: ranks are >= 1)
            dist[r:] = (dist[r:] + dist[: len(dist) - r]) / 2
            dist[:r] /= 2
        observed = round(w_plus * 2)
        return min(1.0, float(dist[observed:].sum())), min(1.0, float(dist[: observed + 1].sum()))
    mean = n * (n + 1) / 4
    _, counts = np.unique(ranks, return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - float((counts**3 - counts).sum()) / 48
    sd = math.sqrt(var)
    p_worse = 0.5 * math.erfc((w_plus - mean - 0.5) / sd / math.sqrt(2))
    p_better = 0.5 * math.erfc((mean - w_plus - 0.5) / sd / math.sqrt(2))
    return min(1.0, p_worse), min(1.0, p_better)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_vals = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def compare(reference: Sequence[float], candidate: Sequence[float], name: str) -> Comparison:
    """Paired comparison of per-sample losses (same rows, same order)."""
    if len(reference) != len(candidate):
        raise BadRequest("paired comparison needs the same rows for both models")
    diffs = [c - r for r, c in zip(reference, candidate, strict=True)]
    sign = sign_test(diffs)
    wil = wilcoxon_signed_rank(diffs)
    return Comparison(
        reference=name,
        n=len(diffs),
        mean_diff=float(np.mean(diffs)) if diffs else 0.0,
        better=sum(1 for d in diffs if d < 0),
        worse=sum(1 for d in diffs if d > 0),
        ties=sum(1 for d in diffs if d == 0),
        sign_p_worse=sign[0],
        sign_p_better=sign[1],
        wilcoxon_p_worse=wil[0],
        wilcoxon_p_better=wil[1],
    )
