"""Train/val/test assignment that is deterministic, stable as the pool grows, and per group.

A group (one session, one commit series) is mapped to a point in [0, 1) by sha256 of
`seed | stratum | group`, and the point picks the split by the cumulative shares. Nothing else
enters the hash, so a group never changes split when other samples arrive, and every sample of a
group lands in one split as long as the caller passes one stratum per group (the stratum of the
group's first sample). Stratification: the stratum salts the hash, so each stratum (source, tier)
draws independently and gets the shares in expectation, with binomial spread (about +-1 point of
val share at 500 groups). Exact per-stratum quotas would need ranks, which shift as the pool grows,
so they are not used; `split_counts` reports what each stratum got. The one exception to
stability is `ensure_nonempty`, for tiny pools (under ~20 groups) whose draw left val empty.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping

SPLITS = ("train", "val", "test")
SMALL_POOL = 20  # below this many groups an empty val split is likely; see ensure_nonempty


def unit_hash(*parts: str) -> float:
    """A deterministic point in [0, 1) for the given parts (sha256, first 8 bytes)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(
    group: str,
    stratum: str,
    shares: tuple[float, float, float] = (0.9, 0.05, 0.05),
    seed: int = 0,
) -> str:
    """The split ("train", "val" or "test") of a group.

    Args:
        group: the group id shared by related samples (a session); the unit of assignment.
        stratum: the group's stratum, e.g. "sessions:A"; must be the same for every sample of the
            group (pass the stratum of its first sample), or the group may be split.
        shares: train/val/test shares summing to 1.
        seed: changes every assignment at once (a different but equally stable split).

    Raises:
        ValueError: when the shares are negative or do not sum to 1.
    """
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1.0) > 1e-6:
        raise ValueError(f"shares must be three non-negative numbers summing to 1, got {shares}")
    point = unit_hash(str(seed), stratum, group)
    if point < shares[0]:
        return "train"
    return "val" if point < shares[0] + shares[1] else "test"


def split_counts(rows: Iterable[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Counts per stratum and split from `(stratum, split)` rows (one row per group or sample).

    Returns:
        `{stratum: {"train": n, "val": n, "test": n}}` with an extra `"*"` stratum for the total.
    """
    counts: dict[str, Counter[str]] = {}
    for stratum, split in rows:
        for name in (stratum, "*"):
            counts.setdefault(name, Counter())[split] += 1
    return {name: {s: c[s] for s in SPLITS} for name, c in sorted(counts.items())}


def format_split_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    """A plain-text table of `split_counts` output, with val/test shares in percent."""
    lines = [f"{'stratum':<20} {'train':>7} {'val':>6} {'test':>6}  val%  test%"]
    for name, c in counts.items():
        total = sum(c.values()) or 1
        lines.append(
            f"{name:<20} {c['train']:>7} {c['val']:>6} {c['test']:>6}"
            f"  {100 * c['val'] / total:4.1f}  {100 * c['test'] / total:5.1f}"
        )
    return "\n".join(lines)


def ensure_nonempty(assignments: Mapping[str, str]) -> dict[str, str]:
    """Moves one group into val when val is empty and there are at least two groups.

    The group moved is the one with the smallest `unit_hash("val", group)` among the train groups
    (or among the test groups when train has a single group), so the choice is deterministic and
    train never becomes empty. This is the only exception to split stability, and it matters only
    for pools with fewer than ~20 groups (`SMALL_POOL`): once a group lands in val by its hash,
    the moved group returns to its own split. Returns a new mapping; the input is not modified.
    """
    out = dict(assignments)
    if len(out) < 2 or "val" in out.values():
        return out
    train = [g for g, s in out.items() if s == "train"]
    pool = train if len(train) >= 2 else [g for g, s in out.items() if s != "train"]
    out[min(pool, key=lambda g: (unit_hash("val", g), g))] = "val"
    return out


def hold_out_groups(assignments: Mapping[str, str], share: float) -> dict[str, str]:
    """Moves a share of the train groups into test, for a pool whose test split is empty.

    Whole groups (sessions) move, so no held-out window shares a session with a training one. The
    groups with the smallest `unit_hash("holdout", group)` go, at least one, leaving train at
    least one group; val is untouched. The hash keeps the choice stable as the pool grows, so
    successive runs mostly hold out the same sessions and the incumbent rarely trained on them.
    Returns a new mapping; nothing moves when test already has a group or `share` is 0.
    """
    out = dict(assignments)
    train = sorted(
        (g for g, s in out.items() if s == "train"), key=lambda g: (unit_hash("holdout", g), g)
    )
    if share <= 0 or "test" in out.values() or len(train) < 2:
        return out
    count = min(len(train) - 1, max(1, round(share * len(train))))
    for g in train[:count]:
        out[g] = "test"
    return out
