"""Coverage of an ingest: per source file, what the collector saw and what the pool now teaches.

A collector counts, per source key, the tool calls and assistant turns it saw, those its samples
supervise and those it lost by named reason (collectors/coverage.py). The pipeline then drops or
trims some samples; `Tally` moves what those samples taught to `<kind>_lost:pipeline_<reason>`, so
`<kind>_supervised` is what the stored samples supervise and the losses still add up.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from sam_brain.protocols import Message, Sample

KINDS = ("tool_calls", "assistant_turns")
CURSOR_PREFIX = "coverage:"  # one state-store cursor per source key: its latest coverage (JSON)


def taught(messages: list[Message]) -> dict[str, int]:
    """Supervised assistant messages of a sample and their tool calls (`weight: 0` is context)."""
    turns = [m for m in messages if m.get("role") == "assistant" and m.get("weight", 1) != 0]
    return {
        "tool_calls": sum(len(m.get("tool_calls") or ()) for m in turns),
        "assistant_turns": len(turns),
    }


def _claimed(sample: Sample) -> dict[str, int]:
    """What the collector said the sample supervises (recounted when it did not say)."""
    sup = sample.meta.get("supervised") if sample.kind == "sft" else None
    if isinstance(sup, dict):
        return {k: int(sup.get(k, 0)) for k in KINDS}
    return taught(sample.messages) if sample.kind == "sft" else dict.fromkeys(KINDS, 0)


class Tally:
    """Coverage of one collector result, adjusted for what the pipeline drops and trims."""

    def __init__(self, coverage: dict[str, Counter[str]]) -> None:
        self.files = {key: Counter(c) for key, c in coverage.items()}

    def dropped(self, sample: Sample, reason: str) -> None:
        self._move(sample, _claimed(sample), f"pipeline_{reason}")

    def trimmed(self, sample: Sample) -> None:
        """`sample` lost turns to the validator's trim; its meta still says what it had."""
        before, after = _claimed(sample), taught(sample.messages)
        self._move(sample, {k: before[k] - after[k] for k in KINDS}, "pipeline_trimmed")

    def _move(self, sample: Sample, counts: dict[str, int], reason: str) -> None:
        cov = self.files.get(sample.source_key)
        if cov is None:
            return
        for kind in KINDS:
            if counts[kind]:
                cov[f"{kind}_supervised"] -= counts[kind]
                cov[f"{kind}_lost:{reason}"] += counts[kind]

    def total(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for cov in self.files.values():
            out.update(cov)
        out["files"] = len(self.files)
        return dict(sorted(out.items()))

    def report(self) -> dict[str, Any]:
        """`{"total": {...}, "files": {key: {...}}}`; empty when the collector counts nothing."""
        if not self.files:
            return {}
        files = {key: dict(sorted(c.items())) for key, c in sorted(self.files.items())}
        return {"total": self.total(), "files": files}

    def cursors(self) -> dict[str, str]:
        """The per-file coverage as state-store cursors (`samctl data stats` sums them)."""
        return {
            CURSOR_PREFIX + key: json.dumps(dict(c), sort_keys=True)
            for key, c in self.files.items()
        }


def summarize(values: dict[str, str]) -> dict[str, Any]:
    """Stored per-file coverage cursors as `{"total": {...}, "files": {path: {...}}}`.

    The total adds `tool_calls_share` and `assistant_turns_share` (supervised / seen).
    """
    total: Counter[str] = Counter()
    files: dict[str, dict[str, int]] = {}
    for key, raw in sorted(values.items()):
        try:
            counts = json.loads(raw)
        except ValueError:
            continue
        if isinstance(counts, dict):
            kept = {k: v for k, v in counts.items() if isinstance(v, int) and v}
            files[key.removeprefix(CURSOR_PREFIX)] = kept
            total.update(kept)
    out: dict[str, Any] = dict(sorted(total.items()))
    out["files"] = len(files)
    for kind in KINDS:
        seen = total[f"{kind}_seen"]
        out[f"{kind}_share"] = round(total[f"{kind}_supervised"] / seen, 4) if seen else None
    return {"total": out, "files": files}
