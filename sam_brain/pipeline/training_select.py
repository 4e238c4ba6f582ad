"""Which samples belong to which training (`[trainings.NAME]`).

A sample whose `meta["training"]` is set (an imported dataset, a teacher job run with
`--training NAME`) belongs to that training only. Otherwise it belongs to a named training when it
passes every rule the training sets (sources, projects by glob, kinds, teacher schemas); a
training that sets no rule takes only the samples pinned to it. The default training "sam" takes
every sample not pinned to another training: with no named trainings, the whole pool as before.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sam_brain.config import DEFAULT_TRAINING, Config, NamedTraining
from sam_brain.pipeline.exclude import PathRules, sample_paths
from sam_brain.pool import Pool
from sam_brain.protocols import Sample


def pinned(sample: Sample) -> str:
    """The training a sample was made for, or "" when none was named."""
    value = sample.meta.get("training")
    return value if isinstance(value, str) else ""


def _matches(sample: Sample, t: NamedTraining) -> bool:
    if not (t.sources or t.projects or t.kinds or t.schemas):
        return False  # no rule: pinned samples only
    if t.sources and sample.source not in t.sources:
        return False
    if t.kinds and sample.kind not in t.kinds:
        return False
    if t.schemas and sample.meta.get("schema") not in t.schemas:
        return False
    if t.projects:
        rules = PathRules(t.projects)
        project = str(sample.meta.get("project") or "")
        places = [*sample_paths(sample), *([project] if project else [])]
        # match_any also knows a transcript by its ~/.claude/projects folder (never scrubbed)
        if not rules.match_any(places):
            return False
    return True


def selector(config: Config, name: str) -> Callable[[Sample], bool]:
    """A predicate: does a sample belong to training `name`?"""
    if name == DEFAULT_TRAINING:
        others = set(config.trainings)
        return lambda s: pinned(s) not in others
    rules = config.trainings[name]
    return lambda s: pinned(s) == name or (not pinned(s) and _matches(s, rules))


def trainable_count(pool: Pool, config: Config, name: str, since: float = 0.0) -> int:
    """SFT samples of training `name` past their quiet period, first seen after `since`.

    With no named trainings the default's count is the pool's own (no row is read).
    """
    if name == DEFAULT_TRAINING and not config.trainings:
        return pool.trainable_count(since=since)
    belongs = selector(config, name)
    rows = pool.samples(kind="sft", ready_before=time.time(), first_seen_after=since)
    return sum(1 for s, _ in rows if belongs(s))
