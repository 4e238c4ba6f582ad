"""Shared data types and the Protocol of each plug-in kind (collectors, training backends).

Plug-ins (`collectors/`, `backends/`, `deployment/`) import from here; this module imports no
plug-in. Types are plain dataclasses that serialise to JSON, because samples cross into LanceDB
and training specs cross into a subprocess.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

Message = dict[str, Any]
"""One chat message: `{"role": ..., "content": ...}` plus optional `tool_calls` / `tool_call_id`."""

SOURCES = ("sessions", "git", "distill", "docs", "teacher", "feedback", "dataset")
TIERS = ("A", "B", "C")


def stable_id(*parts: str) -> str:
    """A sample id that depends only on where the sample came from, never on when it was read."""
    h = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return h[:32]


@dataclass
class Sample:
    """One training example with its provenance.

    `id` is stable (see `stable_id`) so re-ingesting a source updates rows instead of adding them;
    `group` keeps related samples (one session) in one split; `source_key` names the unit that is
    replaced as a whole when it is re-extracted (a transcript file, a commit, a record).
    """

    id: str
    source: str
    source_key: str
    group: str
    messages: list[Message]
    kind: str = "sft"  # "sft" or "preference"
    strategy: str = ""  # curation strategy: A multi-turn, B single Q&A, C knowledge, D subagent
    tier: str = "B"
    score: float = 0.5
    scores: dict[str, float] = field(default_factory=dict)
    chosen: str = ""  # preference samples: the preferred final answer
    rejected: str = ""  # preference samples: the dispreferred final answer
    meta: dict[str, Any] = field(default_factory=dict)
    ready_after: float = 0.0  # unix time before which the sample is not trainable (live sessions)

    def text(self) -> str:
        """All message text joined; what dedup and scrubbing look at."""
        parts = [str(m.get("content") or "") for m in self.messages]
        for m in self.messages:
            for call in m.get("tool_calls") or []:
                parts.append(json.dumps(call.get("function", call), sort_keys=True))
        if self.kind == "preference":
            parts += [self.chosen, self.rejected]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CollectResult:
    """What one collector pass produced.

    `replace_keys`: source keys whose previous samples must be removed before these are stored
    (a re-extracted transcript replaces its samples). `skipped`: reason -> count, never silent.
    `cursors`: key -> value to persist only after the samples are safely stored.
    `coverage`: source key -> what its work was (seen, supervised, lost by reason; see
    collectors/coverage.py), for collectors that count it.
    """

    samples: list[Sample] = field(default_factory=list)
    replace_keys: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)
    cursors: dict[str, str] = field(default_factory=dict)
    coverage: dict[str, Counter[str]] = field(default_factory=dict)

    def merge(self, other: CollectResult) -> None:
        self.samples.extend(other.samples)
        self.replace_keys |= other.replace_keys
        self.skipped.update(other.skipped)
        self.cursors.update(other.cursors)
        self.coverage.update(other.coverage)


class Cursors(Protocol):
    """Durable key/value positions (git cursors, file sizes); implemented by the state store."""

    def get_cursor(self, key: str) -> str | None: ...


@runtime_checkable
class Collector(Protocol):
    """Turns one kind of source into samples."""

    name: str

    def collect(self, cursors: Cursors, paths: Sequence[Path] | None = None) -> CollectResult:
        """Read what is new since the cursors (only `paths` when given) and return samples."""
        ...


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainSpec:
    """Everything a backend needs for one run; JSON-serialisable for the training subprocess.

    `data_dir` holds `train.jsonl` and `valid.jsonl` (`{"messages": [...]}` per line) and, when
    there are preference pairs, `preference.jsonl`. `profile` is `asdict(config.Profile)`.
    """

    run_id: str
    base_model: str  # a local directory (resolved before the run starts)
    data_dir: str
    out_dir: str
    profile: dict[str, Any]
    seed: int = 0
    resume: bool = True
    init_adapter: str = ""  # start from this adapter's weights (the active version), not from zero

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls(**json.loads(text))


@dataclass
class Progress:
    """One progress report from a running trainer."""

    step: int
    total_steps: int
    train_loss: float | None = None
    val_loss: float | None = None
    tokens_per_sec: float | None = None
    peak_memory_mb: float | None = None
    eta_seconds: float | None = None
    message: str = ""


@dataclass
class Preflight:
    """What a backend found before training: sizes, memory estimate, refused options."""

    train_samples: int
    val_samples: int
    train_tokens: int
    estimated_memory_mb: float
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """The outcome of a finished run: where the adapter is and what was measured."""

    adapter_dir: str
    steps: int
    metrics: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@runtime_checkable
class TrainingBackend(Protocol):
    """A LoRA trainer; MLX and CUDA implement the same contract (see backends/)."""

    name: str

    def preflight(self, spec: TrainSpec) -> Preflight:
        """Count tokens, estimate memory; raise BackendUnavailable listing options it cannot honour."""
        ...

    def train(
        self,
        spec: TrainSpec,
        progress: Callable[[Progress], None],
        cancelled: Callable[[], bool],
    ) -> TrainResult:
        """Train, reporting progress; stop cleanly (saving) when `cancelled()` turns true."""
        ...

    def generate(
        self,
        base_model: str,
        adapter_dir: str | None,
        messages: list[Message],
        max_tokens: int = 64,
    ) -> str:
        """Greedy generation with the adapter applied (None: the base alone)."""
        ...


# ---------------------------------------------------------------------------------------------
# Teachers (a larger model that writes, judges or improves samples; see teachers/)


@dataclass
class TeacherRequest:
    """One question for a teacher.

    `system` is the part shared by a whole campaign (instructions, a schema): providers that cache
    prompts cache it. `key` is the caller's id for the request (progress files, batch custom ids).
    `max_tokens` 0 means the teacher's configured `max_output_tokens`.
    """

    messages: list[Message]
    system: str = ""
    max_tokens: int = 0
    temperature: float = 0.0
    key: str = ""


@dataclass
class TeacherReply:
    """A teacher's answer and what it cost in tokens (cache tokens where the provider reports them)."""

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: str = ""
    key: str = ""


@runtime_checkable
class Teacher(Protocol):
    """A chat model that answers `TeacherRequest`s; Anthropic and OpenAI-compatible implement it.

    Implementations retry transient failures themselves and raise `TeacherError` (one line, never
    containing the API key) when a request cannot be answered.
    """

    name: str
    model: str

    def ask(self, request: TeacherRequest) -> TeacherReply:
        """Answer one request."""
        ...
