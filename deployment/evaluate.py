"""The evaluation gate: a candidate adapter is deployed only when it is measurably better.

On the held-out test split (`{"messages": [...]}` per line) the base, the incumbent (the active
version, if any) and the candidate are scored with one resident model (`resident.ResidentModel`
swaps the adapters): per-sample mean NLL over the assistant tokens (`sam_brain.masking`, the same
tokens training supervises), mean loss and perplexity. The candidate is compared per sample with
the reference (the incumbent, else the base) by a paired Wilcoxon signed-rank test (or the sign
test), both implemented exactly in `deployment.stats` (normal approximation for large samples), so
the daemon does not need scipy. The gate also generates answers to a few test prompts and checks
them: repeated token n-grams, ending with end-of-turn within the budget, no chat-template markers
in the text, not empty. Task cases (`deployment.task_gate`), when given, are answered by base,
incumbent and candidate, and a candidate significantly worse on them (the same paired test, per
case) is blocked. `EvalReport` holds every number, the decision and its reasons, as JSON.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deployment.gen_checks import (
    GenerationCheck,
    leaked_markers,
    prompts_from_rows,
    repetition_rate,
    special_markers,
)
from deployment.resident import Completion
from deployment.stats import Comparison, compare
from deployment.task_gate import TaskReport, task_gate, with_tasks
from sam_brain.errors import BadRequest
from sam_brain.masking import encode_chat, load_rows
from sam_brain.protocols import Message
from sam_brain.render import ChatTemplateError
from sam_brain.versions import Versions


@dataclass(frozen=True)
class GateConfig:
    """What the candidate must show to be deployed."""

    margin: float = 0.0  # the candidate's mean loss must be below the reference's minus this
    alpha: float = 0.05  # significance level of the paired test
    test: str = "wilcoxon"  # "wilcoxon" or "sign"
    require_significant: bool = (
        False  # also demand a significant improvement, not just a lower mean
    )
    min_rows: int = 1
    max_length: int = 2048
    prompts: int = 4  # test conversations whose last answer is generated for the checks
    gen_max_tokens: int = 256
    ngram: int = 4
    max_repetition: float = 0.05  # mean share of repeated token n-grams
    min_terminated: float = 0.75  # share of answers that end with end-of-turn within the budget
    # A small model rambles on long agentic prompts before any training: a generation check
    # fails only when the candidate misses the bar *and* does worse than the reference model
    # answering the same prompts (by more than this share), so the gate judges what training did.
    relative_slack: float = 0.05
    case_max_tokens: int = 128  # answer budget of a task case without its own `max_tokens`

    def __post_init__(self) -> None:
        if self.test not in ("wilcoxon", "sign"):
            raise BadRequest(f"gate test must be 'wilcoxon' or 'sign', got {self.test!r}")


@dataclass
class LossStats:
    """One model's loss on the scored test rows (same rows, same order, for every model)."""

    mean_loss: float
    perplexity: float  # exp of the token-weighted mean NLL
    tokens: int
    per_sample: list[float]


@dataclass
class Gate:
    """The decision: `reasons` are the failures when rejected, the evidence when promoted."""

    promote: bool
    reasons: list[str]


@dataclass
class EvalReport:
    """Everything the gate measured; `to_dict()` is plain JSON."""

    candidate: str
    incumbent: str | None
    rows: int
    scored: int
    skipped: int
    base: LossStats
    incumbent_loss: LossStats | None
    candidate_loss: LossStats
    comparison: Comparison
    generation: list[GenerationCheck]
    gate: Gate
    config: GateConfig
    judge: dict[str, Any] | None = None  # the teacher's pairwise verdict (deployment.judge)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    reference_generation: list[GenerationCheck] = field(default_factory=list)
    tasks: TaskReport | None = None  # the task cases' results, when the gate was given case files

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


# -- the gate -----------------------------------------------------------------------------------


def decide(
    reference: Sequence[float],
    candidate: Sequence[float],
    checks: Sequence[GenerationCheck],
    config: GateConfig,
    reference_name: str = "incumbent",
    reference_checks: Sequence[GenerationCheck] = (),
) -> tuple[Comparison, Gate]:
    """Apply the gate to per-sample losses and generation checks.

    `reference_checks` are the reference model's answers to the same prompts: with them a
    generation check fails only where the candidate is also worse than the reference.

    Returns:
        The paired comparison and the decision with its reasons.
    """
    cmp = compare(reference, candidate, reference_name)
    failures: list[str] = []
    ref_mean = float(np.mean(reference)) if len(reference) else math.inf
    cand_mean = float(np.mean(candidate)) if len(candidate) else math.inf
    p_worse, p_better = (
        (cmp.wilcoxon_p_worse, cmp.wilcoxon_p_better)
        if config.test == "wilcoxon"
        else (cmp.sign_p_worse, cmp.sign_p_better)
    )
    if cmp.n < config.min_rows:
        failures.append(f"only {cmp.n} scored test rows (need {config.min_rows})")
    elif not cand_mean < ref_mean - config.margin:
        failures.append(
            f"candidate mean loss {cand_mean:.4f} is not below the {reference_name}'s"
            f" {ref_mean:.4f} (margin {config.margin:g})"
        )
    if p_worse < config.alpha:
        failures.append(
            f"candidate is significantly worse per sample ({config.test} p={p_worse:.3g},"
            f" worse on {cmp.worse} of {cmp.n})"
        )
    if config.require_significant and p_better >= config.alpha:
        failures.append(f"improvement is not significant ({config.test} p={p_better:.3g})")
    failures += _generation_failures(checks, config, reference_checks, reference_name)
    if failures:
        return cmp, Gate(False, failures)
    evidence = [
        f"candidate mean loss {cand_mean:.4f} < {reference_name} {ref_mean:.4f}"
        f" (better on {cmp.better} of {cmp.n}, {config.test} p={p_better:.3g})"
    ]
    if checks:
        evidence.append(f"{len(checks)} generated answers passed the checks")
    return cmp, Gate(True, evidence)


def _generation_failures(
    checks: Sequence[GenerationCheck],
    config: GateConfig,
    reference: Sequence[GenerationCheck] = (),
    reference_name: str = "reference",
) -> list[str]:
    if not checks:
        return []
    failures = []
    slack = config.relative_slack
    repetition = float(np.mean([c.repetition for c in checks]))
    ref_repetition = float(np.mean([c.repetition for c in reference])) if reference else None
    if repetition > config.max_repetition and (
        ref_repetition is None or repetition > ref_repetition + slack
    ):
        than = f", {reference_name} {ref_repetition:.1%}" if ref_repetition is not None else ""
        failures.append(
            f"repetition: {repetition:.1%} of {config.ngram}-grams repeat"
            f" (max {config.max_repetition:.0%}{than})"
        )
    ended = sum(c.terminated for c in checks) / len(checks)
    ref_ended = sum(c.terminated for c in reference) / len(reference) if reference else None
    if ended < config.min_terminated and (ref_ended is None or ended < ref_ended - slack):
        than = f", {reference_name} {ref_ended:.0%}" if ref_ended is not None else ""
        failures.append(
            f"only {ended:.0%} of answers ended within {config.gen_max_tokens} tokens"
            f" (need {config.min_terminated:.0%}{than})"
        )
    # Markers the reference also prints come from the base model or template, not the adapter.
    ref_leaked = {m for c in reference for m in c.leaked}
    leaked = sorted({m for c in checks for m in c.leaked} - ref_leaked)
    if leaked:
        failures.append(f"chat-template markers in answers: {', '.join(leaked)}")
    empty = sum(c.empty for c in checks)
    if empty > sum(c.empty for c in reference):
        failures.append(f"{empty} of {len(checks)} answers are empty")
    return failures


class GateModel(Protocol):
    """What the gate needs of a model: `resident.ResidentModel` (mlx-lm) or
    `torch_scorer.TorchResident` (transformers + peft)."""

    tokenizer: Any

    def use(self, adapter_dir: str | None) -> float: ...

    def generate(self, messages: list[Message], max_tokens: int) -> Completion: ...

    def sample_nll(self, ids: list[int], mask: list[int]) -> tuple[float, int]: ...


def sample_losses(resident: GateModel, encoded: Sequence[tuple[list[int], list[int]]]) -> LossStats:
    """Per-sample mean NLL over supervised tokens with the adapter currently in use."""
    means, nll_total, tokens = [], 0.0, 0
    for ids, mask in encoded:
        total, count = resident.sample_nll(ids, mask)
        means.append(total / count)
        nll_total += total
        tokens += count
    mean = float(np.mean(means)) if means else math.nan
    ppl = math.exp(nll_total / tokens) if tokens else math.nan
    return LossStats(mean, ppl, tokens, means)


def generation_checks(
    resident: GateModel, prompts: list[list[Message]], config: GateConfig, markers: Sequence[str]
) -> list[GenerationCheck]:
    """Answer each prompt with the adapter in use and check the answer."""
    checks = []
    for prompt in prompts:
        out = resident.generate(prompt, config.gen_max_tokens)
        ids = resident.tokenizer.encode(out.text, add_special_tokens=False)
        checks.append(
            GenerationCheck(
                prompt=str(prompt[-1].get("content") or "")[:200],
                text=out.text[:500],
                repetition=repetition_rate(ids, config.ngram),
                terminated=out.finish_reason == "stop",
                leaked=leaked_markers(out.text, markers),
                empty=not out.text.strip(),
            )
        )
    return checks


def evaluate_candidate(
    resident: GateModel,
    test_path: Path,
    candidate_dir: str,
    incumbent_dir: str | None = None,
    config: GateConfig | None = None,
    prompts: list[list[Message]] | None = None,
    cases: Sequence[Path] = (),
) -> EvalReport:
    """Score base, incumbent and candidate on the test split and apply the gate.

    Args:
        resident: The loaded base model (adapters are swapped on it; the candidate stays applied).
        test_path: JSONL of `{"messages": [...]}` rows.
        candidate_dir: The candidate adapter folder.
        incumbent_dir: The active version's adapter folder; None compares with the base.
        config: Gate settings.
        prompts: Conversations for the generation checks; default: from the test rows.
        cases: Task case files (`deployment.cases`) run on base, incumbent and candidate; a
            candidate significantly worse on them is blocked.

    Raises:
        BadRequest: The test file is malformed.
    """
    config = config or GateConfig()
    start = time.perf_counter()
    rows = load_rows(test_path)
    encoded, notes = [], []
    for i, messages in enumerate(rows):
        try:
            ids, mask = encode_chat(resident.tokenizer, messages, config.max_length)
        except ChatTemplateError as err:
            notes.append(f"row {i}: {err}")
            continue
        if len(ids) > 1 and any(mask[1:]):
            encoded.append((ids, mask))
    losses: dict[str, LossStats] = {}
    for name, adapter in (
        ("base", None),
        ("incumbent", incumbent_dir),
        ("candidate", candidate_dir),
    ):
        if name == "incumbent" and adapter is None:
            continue
        resident.use(adapter)
        losses[name] = sample_losses(resident, encoded)
    markers = special_markers(resident.tokenizer)
    chosen = prompts if prompts is not None else prompts_from_rows(rows, config.prompts)
    ref_name = "incumbent" if "incumbent" in losses else "base"
    reference_checks: list[GenerationCheck] = []
    if chosen:
        resident.use(incumbent_dir)
        reference_checks = generation_checks(resident, chosen, config, markers)
        resident.use(candidate_dir)
    checks = generation_checks(resident, chosen, config, markers)
    cmp, gate = decide(
        losses[ref_name].per_sample,
        losses["candidate"].per_sample,
        checks,
        config,
        ref_name,
        reference_checks,
    )
    tasks = None
    if cases:
        tasks = task_gate(
            resident,
            cases,
            candidate_dir,
            incumbent_dir,
            alpha=config.alpha,
            test=config.test,
            max_tokens=config.case_max_tokens,
        )
        gate = Gate(*with_tasks(gate.promote, gate.reasons, tasks))
    return EvalReport(
        candidate=candidate_dir,
        incumbent=incumbent_dir,
        rows=len(rows),
        scored=len(encoded),
        skipped=len(rows) - len(encoded),
        base=losses["base"],
        incumbent_loss=losses.get("incumbent"),
        candidate_loss=losses["candidate"],
        comparison=cmp,
        generation=checks,
        reference_generation=reference_checks,
        gate=gate,
        config=config,
        seconds=time.perf_counter() - start,
        notes=notes,
        tasks=tasks,
    )


def evaluate_version(
    versions: Versions,
    resident: GateModel,
    version: str,
    test_path: Path,
    config: GateConfig | None = None,
    cases: Sequence[Path] = (),
) -> EvalReport:
    """Gate a registered version against the active one and record an `evaluated` event."""
    candidate = versions.get(version)
    active = versions.current()
    incumbent = active if active is not None and active.version != version else None
    report = evaluate_candidate(
        resident,
        test_path,
        candidate.adapter_path,
        incumbent.adapter_path if incumbent else None,
        config,
        cases=cases,
    )
    versions.store.add_event(
        "evaluated",
        {
            "version": version,
            "against": incumbent.version if incumbent else "base",
            "promote": report.gate.promote,
            "reasons": report.gate.reasons,
            "candidate_loss": report.candidate_loss.mean_loss,
            "reference_loss": (report.incumbent_loss or report.base).mean_loss,
            **({"tasks": report.tasks.summary()} if report.tasks else {}),
        },
    )
    return report
