"""The read-only documents behind the dashboard, computed from a home (no HTTP here).

Each function answers one of the page's questions from what the daemon already records: runs
and their loss points, the gate's `evaluated` events, each version's events as a timeline, the
pool by source and tier over time, the ingest reports, and a sample search. They run in a thread
off the event loop (SQLite and LanceDB block).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

from sam_brain.errors import BadRequest, NotFound
from sam_brain.home import Home
from sam_brain.train.losspoints import loss_curve

# Events that belong on a version's timeline, and the data keys that name the version.
VERSION_EVENTS = (
    "version_registered",
    "evaluated",
    "version_gate",
    "canary_started",
    "canary_weight",
    "canary_promoted",
    "canary_aborted",
    "version_rejected",
    "version_activated",
    "rollback",
    "rollback_unavailable",
)
EVENT_SCAN = 2000  # newest events looked at for timelines and gate decisions
FILTERS = ("source", "tier", "split")
MAX_RESULTS = 100


def training_curves(home: Home, runs: int) -> dict[str, Any]:
    """The last `runs` runs (newest first), each with its loss points and best step."""
    out = []
    for run in home.store.runs(runs):
        curve = loss_curve(home.store, run.run_id, limit=500)
        out.append(
            {
                "run_id": run.run_id,
                "status": run.status,
                "trigger": run.trigger,
                "created_at": run.created_at,
                "samples_count": run.samples_count,
                "metrics": run.metrics,
                **{k: curve[k] for k in ("count", "points", "best")},
            }
        )
    return {"runs": out}


def gate_decisions(home: Home, limit: int) -> dict[str, Any]:
    """The gate's verdicts, newest first: candidate vs reference loss, promote, reasons."""
    rows = home.store.events("evaluated", limit)
    decisions = [{"ts": e["ts"], **e["data"]} for e in rows]
    return {"count": len(decisions), "decisions": decisions}


def _names(data: dict[str, Any]) -> set[str]:
    return {str(data[k]) for k in ("version", "from", "to") if data.get(k)}


def version_timelines(home: Home) -> dict[str, Any]:
    """Every version with its events oldest first (registered, gate, canary steps, outcome)."""
    versions = home.store.versions()
    known = {v.version for v in versions}
    by_version: dict[str, list[dict[str, Any]]] = {v: [] for v in known}
    for e in reversed(home.store.events(None, EVENT_SCAN)):
        if e["kind"] not in VERSION_EVENTS:
            continue
        for name in _names(e["data"]) & known:
            by_version[name].append({"ts": e["ts"], "kind": e["kind"], "data": e["data"]})
    return {
        "versions": [
            {
                "version": v.version,
                "status": str(v.status),
                "gate": v.gate,
                "run_id": v.run_id,
                "created_at": v.created_at,
                "deployed_at": v.deployed_at,
                "events": by_version[v.version],
            }
            for v in versions
        ]
    }


def pool_growth(home: Home, buckets: int = 60) -> dict[str, Any]:
    """Samples now in the pool by the time they were first seen: cumulative per source and tier.

    Read from the pool's own columns (what is there now), so a forgotten source leaves the
    history too; `buckets` evenly spaced times from the first sample to now.
    """
    # The pool keeps no history table; its `first_seen` column is the history of what remains.
    rows = home.pool._rows(None, ["source", "tier", "first_seen"])
    now = time.time()
    if not rows:
        return {"total": 0, "times": [], "by_source": {}, "by_tier": {}}
    start = min(float(r["first_seen"]) for r in rows)
    step = max((now - start) / max(buckets - 1, 1), 1.0)
    times = [start + i * step for i in range(buckets)]

    def series(col: str) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for key in sorted({str(r[col]) for r in rows}):
            seen = sorted(float(r["first_seen"]) for r in rows if str(r[col]) == key)
            counts, i = [], 0
            for t in times:
                while i < len(seen) and seen[i] <= t:
                    i += 1
                counts.append(i)
            counts[-1] = len(seen)  # the last bucket is now, whatever the rounding
            out[key] = counts
        return out

    return {
        "total": len(rows),
        "times": [round(t, 1) for t in times],
        "by_source": series("source"),
        "by_tier": series("tier"),
    }


def ingest_reports(home: Home, limit: int) -> dict[str, Any]:
    """The newest ingest reports (collected, stored, skipped and dropped by reason)."""
    files = sorted(home.reports_dir.glob("ingest-*.json"), reverse=True)[:limit]
    reports = []
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # being replaced or hand-edited: leave it out
            continue
        # Per-file coverage can run to thousands of rows; the page shows the totals only.
        coverage = doc.get("coverage")
        if isinstance(coverage, dict):
            doc["coverage"] = {"total": coverage.get("total", {})}
        # The name starts with the local time the report was written: ingest-YYYYmmddTHHMMSS-...
        reports.append({"file": path.name, "when": path.name[7:22], **doc})
    return {"count": len(reports), "reports": reports}


def _filters(query: dict[str, str]) -> dict[str, str]:
    unknown = sorted(set(query) - {*FILTERS, "q", "limit"})
    if unknown:
        raise BadRequest(f"unknown parameter(s): {', '.join(unknown)}")
    return {k: query[k] for k in FILTERS if query.get(k)}


def search_samples(home: Home, query: dict[str, str]) -> dict[str, Any]:
    """Samples whose text contains `q` (any case), filtered by source/tier/split; newest ids last.

    Returns the number that matched and up to `limit` (at most 100) summaries.
    """
    filters = _filters(query)
    text = query.get("q", "").strip().lower()
    try:
        limit = min(max(int(query.get("limit", "20")), 1), MAX_RESULTS)
    except ValueError as err:
        raise BadRequest("parameter 'limit' must be a whole number") from err
    if len(text) > 200:
        raise BadRequest("parameter 'q' is longer than 200 characters")
    matched, results = 0, list[dict[str, Any]]()
    facets: dict[str, Counter[str]] = {k: Counter() for k in FILTERS}
    for sample, split in home.pool.samples(split=filters.get("split")):
        values = {"source": sample.source, "tier": sample.tier, "split": split}
        if any(values[k] != v for k, v in filters.items()):
            continue
        body = sample.text()
        if text and text not in body.lower():
            continue
        matched += 1
        for k in FILTERS:
            facets[k][values[k]] += 1
        if len(results) < limit:
            first_user = next((m for m in sample.messages if m.get("role") == "user"), {})
            results.append(
                {
                    "id": sample.id,
                    **values,
                    "kind": sample.kind,
                    "score": sample.score,
                    "turns": len(sample.messages),
                    "preview": str(first_user.get("content") or body)[:160],
                }
            )
    return {
        "matched": matched,
        "samples": results,
        "facets": {k: dict(v) for k, v in facets.items()},
    }


def sample_doc(home: Home, sample_id: str, tokenizer: Any, label: str) -> dict[str, Any]:
    """One sample with its training text and the character spans the loss is computed on."""
    from sam_brain.masking import supervised_spans

    found = home.pool.get(sample_id)
    if found is None:
        raise NotFound(f"no sample {sample_id!r} in the pool")
    sample, columns = found
    doc: dict[str, Any] = {
        "sample": asdict(sample),
        "split": columns.get("split"),
        "rendered_with": label,
    }
    if sample.kind != "sft":
        doc.update(text=None, spans=[], note=f"a {sample.kind} pair; only SFT samples render")
        return doc
    full, spans = supervised_spans(tokenizer, sample.messages)
    doc.update(text=full, spans=[list(s) for s in spans])
    return doc
