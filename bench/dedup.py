"""Near-duplicate benchmark: our DedupIndex against plain datasketch MinHash + MinHashLSH.

Builds N sample texts (default 100,000) whose words are drawn from the vocabulary of the
samples our collector makes of the ../shared transcripts, with log-normal lengths (median 150
words, 20 to 1,000; about 1 KB a text, like a single-turn sample), and plants ~10% near duplicates of earlier texts (a few words substituted,
deleted or inserted, a sentence appended, or only case and spacing changed), each kept only if
its word 5-gram Jaccard similarity to its original is at least 0.9. Both sides then see the
texts in order, end to end from the raw string (normalising, shingling, hashing, LSH query,
insert), as the ingest pipeline does: a text flagged as a duplicate is not added. A flag is
right when it names the planted original. The anchor is what the seed pipeline did: a
datasketch `MinHash(num_perm=128)` of the encoded word 5-grams and `MinHashLSH(threshold=0.85)`.

Run from the repository root (about 4 minutes; `--quick` takes seconds):
    .venv/bin/python bench/dedup.py [--n 100000] [--quick]
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/dedup.py` works

THRESHOLD = 0.85
NUM_PERM = 128
SHINGLE = 5
MIN_PLANTED_JACCARD = 0.9
BATCH = 2000  # samples fingerprinted at once when prefetching
MEDIAN_WORDS_LOG = math.log(150)  # text lengths: log-normal, median 150 words (about 1 KB)


@dataclass
class Corpus:
    texts: list[str]
    origin: dict[int, int]  # planted duplicate -> the text it was made from
    jaccard: list[float]  # true word 5-gram Jaccard of each planted pair


def _vocabulary() -> list[str]:
    """Words of the samples our collector makes of the fixtures, with repeats (so drawing from
    the list follows their frequency)."""
    from bench.ingest import NoCursors
    from collectors.sessions import SessionCollector

    texts = [s.text() for s in SessionCollector([common.SESSIONS]).collect(NoCursors()).samples]
    return [w for t in texts for w in re.findall(r"\w+", t.lower())] or ["empty"]


def shingles(text: str) -> set[str]:
    words = " ".join(text.lower().split()).split(" ")
    return {" ".join(words[i : i + SHINGLE]) for i in range(max(len(words) - SHINGLE + 1, 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def _edit(rng: random.Random, text: str, vocab: list[str]) -> str:
    words = text.split()
    how = rng.choice(["substitute", "delete", "insert", "append", "case"])
    k = max(1, len(words) // 200)
    if how == "case":
        return "  ".join(w.upper() if rng.random() < 0.2 else w for w in words) + "\n"
    if how == "append":
        return text + " " + " ".join(rng.choices(vocab, k=rng.randint(2, 6)))
    for _ in range(k):
        i = rng.randrange(len(words))
        if how == "substitute":
            words[i] = rng.choice(vocab)
        elif how == "delete" and len(words) > SHINGLE * 4:
            del words[i]
        else:
            words.insert(i, rng.choice(vocab))
    return " ".join(words)


def build_corpus(n: int, seed: int = 0) -> Corpus:
    vocab = _vocabulary()
    rng = random.Random(seed)
    texts: list[str] = []
    origin: dict[int, int] = {}
    scores: list[float] = []
    for i in range(n):
        if i > 100 and rng.random() < 0.1:
            base = rng.randrange(i)
            while base in origin:
                base = origin[base]
            if len(texts[base].split()) >= 30:
                for _ in range(5):
                    candidate = _edit(rng, texts[base], vocab)
                    if (score := jaccard(candidate, texts[base])) >= MIN_PLANTED_JACCARD:
                        texts.append(candidate)
                        origin[i] = base
                        scores.append(score)
                        break
                if i in origin:
                    continue
        length = min(max(int(rng.lognormvariate(MEDIAN_WORDS_LOG, 0.8)), 20), 1000)
        texts.append(" ".join(rng.choices(vocab, k=length)))
    return Corpus(texts, origin, scores)


def run_ours(texts: list[str], prefetch: bool, persist: dict[str, float]) -> list[str | None]:
    """Check then add each text, as one ingest pass does; then save and reopen the index."""
    from sam_brain.pipeline import dedup
    from sam_brain.pipeline.dedup import DedupIndex

    with common.temp_dir("dedup") as tmp:
        path = Path(tmp) / "dedup.idx"
        index = DedupIndex.open(path, THRESHOLD, NUM_PERM)
        found: list[str | None] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            if prefetch:
                index.prefetch(batch)
            for i, text in enumerate(batch, start):
                dup = index.check(str(i), text)
                found.append(dup)
                if dup is None:
                    index.add(str(i), text)
        _, persist["save"] = common.timed(index.save)
        dedup.clear_cache()
        reopened, persist["open"] = common.timed(lambda: DedupIndex.open(path, THRESHOLD, NUM_PERM))
        assert len(reopened) == len(index)
        persist["size"] = path.stat().st_size
        return found


def run_datasketch(texts: list[str]) -> list[str | None]:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    hashes: dict[str, MinHash] = {}
    found: list[str | None] = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=NUM_PERM)
        m.update_batch([s.encode("utf-8") for s in shingles(text)])
        candidates = lsh.query(m)
        if candidates:
            found.append(max(candidates, key=lambda k: (m.jaccard(hashes[k]), k)))
            continue
        found.append(None)
        lsh.insert(str(i), m)
        hashes[str(i)] = m
    return found


def score(found: list[str | None], origin: dict[int, int]) -> dict[str, float]:
    tp = sum(1 for i, d in enumerate(found) if d is not None and origin.get(i) == int(d))
    flagged = sum(d is not None for d in found)
    return {
        "flagged": flagged,
        "precision": tp / flagged if flagged else 1.0,
        "recall": tp / len(origin) if origin else 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="number of samples")
    p.add_argument("--quick", action="store_true", help="smoke-sized run (1,500 samples)")
    args = p.parse_args(argv)
    n = 1500 if args.quick else args.n
    print(f"bench dedup: {common.machine_load()}")
    corpus, build_s = common.timed(lambda: build_corpus(n))
    chars = sum(map(len, corpus.texts))
    print(f"corpus: {n:,} texts, {chars / n:,.0f} chars on average, {len(corpus.origin):,} "
          f"planted near duplicates (Jaccard {min(corpus.jaccard):.2f}-{max(corpus.jaccard):.2f},"
          f" median {sorted(corpus.jaccard)[len(corpus.jaccard) // 2]:.2f}), built in "
          f"{build_s:.1f}s")  # fmt: skip
    persist: list[dict[str, float]] = [{}, {}, {}]
    sides: list[tuple[str, Callable[[], list[str | None]]]] = [
        ("datasketch MinHash + MinHashLSH (anchor)", lambda: run_datasketch(corpus.texts)),
        (
            "ours: DedupIndex check/add per sample",
            lambda: run_ours(corpus.texts, False, persist[1]),
        ),
        (
            f"ours: DedupIndex + prefetch per {BATCH:,}",
            lambda: run_ours(corpus.texts, True, persist[2]),
        ),
    ]
    rows, seconds, quality = [], [], []
    for (name, fn), saved in zip(sides, persist, strict=True):
        found, t = common.timed(fn)
        s = score(found, corpus.origin)
        t -= saved.get("save", 0.0) + saved.get("open", 0.0)  # not dedup work: shown apart
        seconds.append(t)
        quality.append(s)
        rows.append([name, t, n / t, s["flagged"], s["precision"], s["recall"]])
    print(f"machine: {common.machine_load()}")
    common.print_table(
        f"Near-duplicate detection on {n:,} samples (threshold {THRESHOLD}, {NUM_PERM} perms)",
        ["pipeline", "seconds", "samples/s", "flagged", "precision", "recall"],
        rows,
    )
    done = persist[2]
    print(f"\nours, after the pass: save {done['save']:.2f}s ({done['size'] / common.MB:.1f} MB"
          f" file), cold open {done['open']:.2f}s")  # fmt: skip
    for label, i in (("per sample", 1), ("prefetch", 2)):
        ratio = seconds[0] / seconds[i]
        ok = ratio >= 10 and quality[i]["precision"] >= 0.95 and quality[i]["recall"] >= 0.95
        common.report_ratio(
            f"dedup datasketch/ours time ({label})", ratio, ">= 10, P/R >= 0.95", ok
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
