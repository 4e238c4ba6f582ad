"""The teach job interface: what `generate`, `augment` and `preferences` implement, and their name table.

A job turns a `JobSpec` into teacher requests (each with a key unique within the job) and turns
each reply into samples. The runner (`sam_brain.teach.runner`) owns everything else: the budgeted
teacher, the append-only progress file (a crash or a budget stop resumes without paying twice:
answered keys are replayed from the file, never asked again), concurrency or the batch API,
cancellation, status, and storing samples through `store_result` (source `teacher`).

A job's `run(ctx)` typically does:

    requests = [TeacherRequest(messages=..., system=shared, key=f"doc-{i}") for i, ... in ...]
    ctx.set_total(len(requests))
    ctx.ask_all(requests, self.handle)   # handle(request, reply) -> Outcome

and may call `ctx.ask_all` more than once (stages), `ctx.check_cancelled()` in its own loops, and
`ctx.count(reason)` for drops it finds before asking. Sample ids must be stable (derived from the
job id and the request key) so that replaying a reply after a crash updates rows instead of adding.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sam_brain.config import TeacherConfig
from sam_brain.errors import BadRequest, SamBrainError
from sam_brain.home import Home
from sam_brain.protocols import Sample, Teacher, TeacherReply, TeacherRequest, stable_id


class JobCancelled(SamBrainError):
    """The job was cancelled (`samctl teach cancel`); its progress is kept, a rerun resumes it."""

    exit_code = 130
    http_status = 409


@dataclass(frozen=True)
class JobSpec:
    """What to run. The same spec has the same `job_id`, so running it again resumes it.

    `source`: generate's schema file; augment's docs folder (empty: the configured docs); unused
    by preferences. `count`: how many examples / pairs to aim for (0: the job's default).
    `training`: the named training the samples belong to (`meta["training"]`; "" = default).
    `options`: job-specific knobs, JSON scalars only (e.g. {"per_doc": 25, "k": 4}).
    """

    kind: str
    source: str = ""
    count: int = 0
    training: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        blob = json.dumps(
            [self.kind, self.source, self.count, self.training, self.options], sort_keys=True
        )
        stem = Path(self.source).stem if self.source else (self.training or "sam")
        return f"{self.kind}-{stem}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "count": self.count,
            "training": self.training,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> JobSpec:
        """A spec from an API body or a progress file; bad fields are a one-line `BadRequest`."""
        kind = doc.get("kind")
        if kind not in JOBS:
            raise BadRequest(f"unknown teach job {kind!r} (choose one of: {', '.join(JOBS)})")
        count = doc.get("count", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise BadRequest("field 'count' must be a non-negative integer")
        for name in ("source", "training"):
            if not isinstance(doc.get(name, ""), str):
                raise BadRequest(f"field {name!r} must be a string")
        if kind == "generate" and not doc.get("source"):
            raise BadRequest(
                "generate needs a schema: 'source' (samctl teach generate --from FILE)"
            )
        options = doc.get("options") or {}
        if not isinstance(options, dict) or not all(
            isinstance(v, str | int | float | bool) for v in options.values()
        ):
            raise BadRequest("field 'options' must be an object of strings, numbers or booleans")
        return cls(
            kind=kind,
            source=doc.get("source", ""),
            count=count,
            training=doc.get("training", ""),
            options=options,
        )


@dataclass
class Outcome:
    """What a job made of one reply: samples to store and counts by reason (drops, kinds made)."""

    samples: list[Sample] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)


Handler = Callable[[TeacherRequest, TeacherReply], Outcome]


class JobContext(Protocol):
    """What the runner gives a job (implemented by `sam_brain.teach.runner.Context`)."""

    home: Home
    config: TeacherConfig
    spec: JobSpec
    job_id: str
    exclusive: Any  # the daemon's resident-model runner (train.release.Exclusive) or None

    @property
    def teacher(self) -> Teacher:
        """The teacher, budgeted and ledgered: every call is logged with tokens and cost."""
        ...

    def ask_all(self, requests: Sequence[TeacherRequest], handle: Handler) -> None:
        """Ask every request not yet answered (replaying answered ones from the progress file),
        call `handle` on each reply in this thread, store the samples and record the counts.

        Raises:
            BudgetExhausted: The day's budget is spent; answered work is kept.
            JobCancelled: The job was cancelled; answered work is kept.
        """
        ...

    def set_total(self, total: int) -> None:
        """How many requests the job will make (for the progress bar); may grow between stages."""
        ...

    def count(self, reason: str, n: int = 1) -> None:
        """Count something the job dropped or made outside `ask_all` (shown in status)."""
        ...

    def check_cancelled(self) -> None:
        """Raise `JobCancelled` when a cancel was asked."""
        ...

    def log(self, message: str) -> None:
        """A progress line for the daemon log and the status `message` field."""
        ...


@runtime_checkable
class TeachJob(Protocol):
    """One kind of teach job; instantiated with no arguments, then `run(ctx)`."""

    kind: str

    def run(self, ctx: JobContext) -> None: ...


# The name table: kind -> "module:Class", imported when asked for.
JOBS: dict[str, str] = {
    "generate": "sam_brain.teach.generate:GenerateJob",
    "augment": "sam_brain.teach.augment:AugmentJob",
    "preferences": "sam_brain.teach.preferences:PreferencesJob",
}


def load_job(kind: str) -> TeachJob:
    """An instance of the job called `kind`."""
    try:
        target = JOBS[kind]
    except KeyError:
        raise BadRequest(f"unknown teach job {kind!r} (choose one of: {', '.join(JOBS)})") from None
    module_name, attr = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        raise BadRequest(f"teach job {kind!r} is not available in this build") from None
    job: TeachJob = getattr(module, attr)()
    return job


def sample_id(job_id: str, key: str, index: int = 0) -> str:
    """A stable sample id: replaying the same reply after a crash updates, never duplicates."""
    return stable_id("teacher", job_id, key, str(index))


def json_array(text: str) -> list[Any] | None:
    """The JSON array in a teacher's answer (code fences and prose around it allowed), else None."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start : end + 1])
    except ValueError:
        return None
    return value if isinstance(value, list) else None
