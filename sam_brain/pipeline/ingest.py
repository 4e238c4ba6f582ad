"""The collect half of the pipeline: source -> validate -> scrub -> dedup -> split -> pool.

One `ingest()` call runs one collector pass and commits its samples, dedup index and cursors under
the pool's write lock, in that order: a kill between steps at worst re-reads a source whose
samples have stable ids, so nothing is lost and nothing duplicates. Every pass writes a data
report (counts per stage, source and tier; drops by reason) under `<data>/reports/`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam_brain import registry
from sam_brain.config import PipelineConfig
from sam_brain.fsutil import write_jsonl_atomic, write_text_atomic
from sam_brain.home import Home
from sam_brain.pipeline.coverage import Tally
from sam_brain.pipeline.dedup import DedupIndex, dedup_text
from sam_brain.pipeline.exclude import EXCLUDED, PathRules, sample_paths
from sam_brain.pipeline.forget_rules import load_cached
from sam_brain.pipeline.scrub import Scrubber
from sam_brain.pipeline.split import assign_split
from sam_brain.pipeline.tokens import message_counter, window_tokens
from sam_brain.pipeline.validate import check_sample
from sam_brain.pool import file_lock
from sam_brain.protocols import Collector, CollectResult, Sample

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    """What one pass did; also written as JSON to the reports folder."""

    collector: str
    collected: int = 0
    stored: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: Counter[str] = field(default_factory=Counter)  # by the collector, by reason
    dropped: Counter[str] = field(default_factory=Counter)  # by the pipeline, by reason
    trimmed: int = 0
    redactions: Counter[str] = field(default_factory=Counter)
    by_source: Counter[str] = field(default_factory=Counter)
    by_tier: Counter[str] = field(default_factory=Counter)
    by_split: Counter[str] = field(default_factory=Counter)
    # Tool calls and assistant turns seen, supervised and lost by reason, in total and per file.
    coverage: dict[str, Any] = field(default_factory=dict)
    pool_version: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in self.__dict__.items()}


def make_collectors(home: Home) -> dict[str, Collector]:
    """Instantiate the collectors the config enables, through the registry's name table."""
    src = home.config.sources
    out: dict[str, Collector] = {}
    dirs = [Path(d).expanduser() for d in src.sessions_dirs]
    out["sessions"] = registry.load(registry.COLLECTORS, "sessions", "collector")(
        dirs=dirs,
        quiet_minutes=src.quiet_minutes,
        max_tokens=window_tokens(home.config),
        count=message_counter(home.config),
        archive_dir=home.archive_dir if src.archive_transcripts else None,
        exclude=src.exclude,
        forget_file=home.data / "forget.json",
    )
    if src.git_repos:
        out["git"] = registry.load(registry.COLLECTORS, "git", "collector")(
            repos=[Path(r).expanduser() for r in src.git_repos],
            bot_authors=list(src.git_bot_authors),
            max_diff_chars=src.git_max_diff_chars,
            exclude=src.exclude,
        )
    distill = home.data / "distill"
    out["distill"] = registry.load(registry.COLLECTORS, "distill", "collector")(
        inbox=home.distill_inbox,
        rejects_path=distill / "rejects.jsonl",
        processed_dir=distill / "processed",
        exclude=src.exclude,
    )
    if src.docs_paths:
        out["docs"] = registry.load(registry.COLLECTORS, "docs", "collector")(
            paths=[Path(p).expanduser() for p in src.docs_paths], exclude=src.exclude
        )
    return out


def store_result(
    home: Home,
    name: str,
    result: CollectResult,
    *,
    scrubber: Scrubber | None = None,
    near_dedup: bool = True,
) -> IngestReport:
    """Validate, scrub, dedup, split and store one collector result (the commit step).

    `near_dedup=False` drops exact duplicates only: for samples that share a long prompt by
    design (feedback pairs on one conversation), which near-duplicate detection would merge.
    """
    started = time.monotonic()
    cfg = home.config.pipeline
    report = IngestReport(collector=name, collected=len(result.samples))
    report.skipped.update(result.skipped)
    scrubber = scrubber or Scrubber(redact_emails=cfg.redact_emails)
    tally = Tally(result.coverage)
    with file_lock(home.pool.lock_path):
        index = _open_index(home, cfg.dedup_threshold)
        old_ids: set[str] = set()
        if result.replace_keys:
            old_ids = {s.id for s, _ in home.pool.samples(source_keys=result.replace_keys)}
        kept = _not_forgotten(home, result.samples, report, tally)
        prepared = _clean(kept, cfg, scrubber, report, tally)
        known = home.pool.group_splits({s.group for s, _ in prepared})
        batch = _dedup_and_split(prepared, index, cfg, report, tally, near_dedup, known)
        counts = home.pool.upsert(list(batch.values()), result.replace_keys)
        for gone in old_ids - set(batch):
            index.remove(gone)
        index.save()
        _save_progress(home, name, result, report, tally)
        maybe_compact(home)
    report.coverage = tally.report()
    finish_report(home, report, stored=len(batch), counts=counts, started=started)
    return report


def _not_forgotten(
    home: Home, samples: Sequence[Sample], report: IngestReport, tally: Tally
) -> list[Sample]:
    """Samples neither excluded (`sources.exclude`, a backstop to the collectors' own check)
    nor forgotten (`samctl data forget` tombstones); the others are counted and dropped."""
    rules = PathRules(home.config.sources.exclude)
    stones = load_cached(home.data / "forget.json")
    if not rules and not stones:
        return list(samples)
    out: list[Sample] = []
    for sample in samples:
        reason = (
            EXCLUDED
            if rules and rules.match_any(sample_paths(sample))
            else "forgotten"
            if stones and stones.drops(sample)
            else None
        )
        if reason is None:
            out.append(sample)
        else:
            report.dropped[reason] += 1
            tally.dropped(sample, reason)
    return out


# Compaction runs once this many versions beyond `pipeline.pool_keep_versions` piled up, at
# most once an hour (when the young versions `pool_keep_days` keeps are all there is).
COMPACT_SLACK = 10
COMPACT_EVERY_S = 3600.0
# A run in any other state (pending, training, or one waiting to resume) may still read its
# recorded pool version.
FINAL_RUN_STATES = ("completed", "failed", "cancelled")
_last_compact: dict[Path, float] = {}


def maybe_compact(home: Home, *, force: bool = False) -> int:
    """Compact the pool and remove old versions within the configured limits (under the lock).

    Kept: `pipeline.pool_keep_versions` newest, those younger than `pipeline.pool_keep_days`,
    and the pool version of every run not yet completed, failed or cancelled (its dataset may
    be read from it). Returns how many versions went.
    """
    cfg = home.config.pipeline
    if not force:
        if home.pool.version_count() <= cfg.pool_keep_versions + COMPACT_SLACK:
            return 0
        if time.monotonic() - _last_compact.get(home.pool.root, -COMPACT_EVERY_S) < COMPACT_EVERY_S:
            return 0
    _last_compact[home.pool.root] = time.monotonic()
    protect = {r.pool_version for r in home.store.runs(1000) if r.status not in FINAL_RUN_STATES}
    removed = home.pool.compact(cfg.pool_keep_versions, cfg.pool_keep_days, protect)
    if removed:
        log.info("pool compacted: %d old versions removed", removed)
    return removed


def _open_index(home: Home, threshold: float) -> DedupIndex:
    index = DedupIndex.open(home.dedup_path, threshold=threshold)
    if index.needs_rebuild:  # a damaged index file was set aside: refill it from the pool
        index.rebuild((s.id, dedup_text(s)) for s, _ in home.pool.samples())
    return index


def _clean(
    samples: Sequence[Sample],
    cfg: PipelineConfig,
    scrubber: Scrubber,
    report: IngestReport,
    tally: Tally,
) -> list[tuple[Sample, str]]:
    """Valid, scrubbed samples with their text; drops and redactions counted on the report."""
    prepared: list[tuple[Sample, str]] = []
    for raw in samples:
        sample, reason = check_sample(raw, cfg.max_tokens, cfg.min_chars)
        if sample is None:
            report.dropped[reason or "invalid"] += 1
            tally.dropped(raw, reason or "invalid")
            continue
        if reason == "trimmed":
            report.trimmed += 1
            tally.trimmed(sample)
        # Scrub before dedup and storage: no credential reaches the pool or its index.
        sample, found = scrubber.scrub_sample(sample)
        report.redactions.update(found)
        prepared.append((sample, dedup_text(sample)))
    return prepared


def _dedup_and_split(
    prepared: list[tuple[Sample, str]],
    index: DedupIndex,
    cfg: PipelineConfig,
    report: IngestReport,
    tally: Tally,
    near: bool = True,
    known: dict[str, str] | None = None,
) -> dict[str, tuple[Sample, str]]:
    """The new samples by id with their split; near-duplicates are dropped and counted.

    `known`: the split each group already has in the pool. A sample joining a group there takes
    that split (a teacher pair or a correction made from a test-split sample stays held out),
    whatever its own source would hash to.
    """
    splits = dict(known or {})
    shares = (cfg.split[0], cfg.split[1], cfg.split[2])
    # Fingerprint the whole batch in one vectorised pass, then check one by one.
    index.prefetch(text for _, text in prepared)
    batch: dict[str, tuple[Sample, str]] = {}
    for sample, text in prepared:
        dup = index.check(sample.id, text, near)
        if (dup is not None and dup != sample.id) or sample.id in batch:
            report.dropped["duplicate"] += 1
            tally.dropped(sample, "duplicate")
            continue
        index.add(sample.id, text)
        # The unit is the group: every sample of a session (and what was made from it) shares
        # one split; a new group is assigned by its first sample's source.
        split = splits.get(sample.group) or assign_split(sample.group, sample.source, shares)
        splits[sample.group] = split
        batch[sample.id] = (sample, split)
        report.by_source[sample.source] += 1
        report.by_tier[sample.tier] += 1
        report.by_split[split] += 1
    return batch


def _save_progress(
    home: Home, name: str, result: CollectResult, report: IngestReport, tally: Tally
) -> None:
    """The collector's cursors, per-file coverage, and the cumulative skip and drop counters."""
    home.store.set_cursors({**result.cursors, **tally.cursors()})
    # "unchanged" is the normal state of a polled source, not a problem worth a counter.
    home.store.add_counts(
        f"skipped:{name}", {k: v for k, v in report.skipped.items() if k != "unchanged"}
    )
    home.store.add_counts(f"dropped:{name}", dict(report.dropped))


# The report fields the `ingest` event repeats (the full report is the JSON file).
REPORT_EVENT_KEYS = (
    "collector",
    "collected",
    "stored",
    "inserted",
    "updated",
    "deleted",
    "pool_version",
)


def finish_report(
    home: Home, report: IngestReport, *, stored: int, counts: dict[str, int], started: float
) -> None:
    """Fill in the report's totals; write it and an `ingest` event when the pass did anything."""
    report.stored = stored
    report.inserted, report.updated, report.deleted = (
        counts["inserted"],
        counts["updated"],
        counts["deleted"],
    )
    report.pool_version = home.pool.version
    report.seconds = round(time.monotonic() - started, 3)
    # A poll that found every file unchanged did nothing worth a report (it runs every few
    # seconds); nor does one that only meets skips the last pass met too (a missing folder).
    skips = sorted(k for k, v in report.skipped.items() if k != "unchanged" and v)
    key = f"ingest.skips:{report.collector}"
    last = home.store.get_cursor(key)
    new_skips = bool(set(skips) - set(json.loads(last or "[]")))
    if json.dumps(skips) != last and (skips or last):
        home.store.set_cursors({key: json.dumps(skips)})
    if report.collected or report.deleted or report.stored or new_skips:
        write_report(home, report)
        doc = report.to_dict()
        home.store.add_event("ingest", {k: doc[k] for k in REPORT_EVENT_KEYS})


def ingest(home: Home, collector: Collector, paths: Sequence[Path] | None = None) -> IngestReport:
    """Run one collector pass and store what it found."""
    result = collector.collect(home.store, paths)
    return store_result(home, collector.name, result)


def write_report(home: Home, report: IngestReport) -> Path:
    ts = time.strftime("%Y%m%dT%H%M%S")
    path = home.reports_dir / f"ingest-{ts}-{report.collector}-{time.time_ns() % 10**6:06d}.json"
    write_text_atomic(path, json.dumps(report.to_dict(), indent=2))
    return path


def export_split(home: Home, split: str, out: Path, *, trainable_only: bool = False) -> int:
    """Write `{"messages": [...]}` lines for one split (or `all`); returns the line count."""
    rows = home.pool.samples(
        kind="sft",
        split=None if split == "all" else split,
        ready_before=time.time() if trainable_only else None,
    )
    records = ({"messages": s.messages} for s, _ in rows)
    return write_jsonl_atomic(out, records)
