"""Task cases in the gate and in `samctl eval`: the same cases answered by several models, compared.

`compare_on_cases` answers every case (greedy, through the gate's resident model: adapters are
swapped on one loaded base) with each model in turn and compares the candidate's per-case scores
with the reference's by the gate's paired test (`deployment.stats.compare`, on 1 - score so that
"worse" means the same as for losses). A candidate significantly worse than the reference
(p_worse < alpha) is blocked; the reasons name the worst cases with both scores. `task_gate` is
the gate's entry point: it takes the case files as an argument (the default training's
`deployment.gate_cases`, or a named training's own), so a caller picks which files judge which
lineage. A case file that cannot be read blocks the candidate with the file's problem as reason:
a configured benchmark that cannot run must not be read as a pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deployment.benchmarks import BenchmarkReport, model_generate, run_benchmark
from deployment.cases import BenchmarkCase, load_case_files
from deployment.resident import Completion
from deployment.stats import Comparison, compare
from sam_brain.errors import BadRequest
from sam_brain.protocols import Message

Side = tuple[str, str | None]  # (name in the report, adapter folder; None: the bare base)
WORST_SHOWN = 3


class CaseModel(Protocol):
    """What answering cases needs of a model: the gate's `ResidentModel` or `TorchResident`."""

    def use(self, adapter_dir: str | None) -> float: ...

    def generate(self, messages: list[Message], max_tokens: int) -> Completion: ...


@dataclass
class TaskReport:
    """Every model's benchmark on the same cases, the paired comparison and the verdict."""

    files: list[str]
    candidate: str
    reference: str
    cases: int
    reports: dict[str, BenchmarkReport] = field(default_factory=dict)
    comparison: Comparison | None = None
    test: str = "wilcoxon"
    alpha: float = 0.05
    p_worse: float = 1.0
    p_better: float = 1.0
    blocked: bool = False
    reasons: list[str] = field(default_factory=list)
    error: str = ""  # the case files could not be used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The few numbers events and status lines carry."""
        return {
            "cases": self.cases,
            "reference": self.reference,
            "scores": {name: round(r.score, 4) for name, r in self.reports.items()},
            "p_worse": self.p_worse,
            "blocked": self.blocked,
            "error": self.error,
        }


def task_gate(
    model: CaseModel,
    case_files: Sequence[Path],
    candidate_dir: str,
    incumbent_dir: str | None = None,
    *,
    alpha: float = 0.05,
    test: str = "wilcoxon",
    max_tokens: int = 128,
) -> TaskReport:
    """Run the case files on the base, the incumbent (if any) and the candidate, and judge.

    The candidate is compared with the incumbent, else the base; it stays applied afterwards.
    """
    files = [str(p) for p in case_files]
    reference = "incumbent" if incumbent_dir is not None else "base"
    try:
        cases = load_case_files(case_files)
    except BadRequest as err:
        why = f"task cases: {err}"
        return TaskReport(
            files,
            "candidate",
            reference,
            0,
            test=test,
            alpha=alpha,
            blocked=True,
            reasons=[why],
            error=str(err),
        )
    sides: list[Side] = [("base", None)]
    if incumbent_dir is not None:
        sides.append(("incumbent", incumbent_dir))
    sides.append(("candidate", candidate_dir))
    return compare_on_cases(
        model,
        cases,
        sides,
        reference,
        "candidate",
        files=files,
        alpha=alpha,
        test=test,
        max_tokens=max_tokens,
    )


def compare_on_cases(
    model: CaseModel,
    cases: Sequence[BenchmarkCase],
    sides: Sequence[Side],
    reference: str,
    candidate: str,
    *,
    files: Sequence[str] = (),
    alpha: float = 0.05,
    test: str = "wilcoxon",
    max_tokens: int = 128,
) -> TaskReport:
    """Answer `cases` with each side's adapter (in order) and compare `candidate` with `reference`.

    Raises:
        BadRequest: `reference` or `candidate` is not one of the sides' names.
    """
    names = [name for name, _ in sides]
    if reference not in names or candidate not in names:
        raise BadRequest(f"compare {candidate!r} with {reference!r}: sides are {names}")
    report = TaskReport(list(files), candidate, reference, len(cases), test=test, alpha=alpha)
    generate = model_generate(model)
    for name, adapter in sides:
        model.use(adapter)
        report.reports[name] = run_benchmark(cases, generate, max_tokens)
    ref, cand = report.reports[reference], report.reports[candidate]
    # The paired test reads "worse" as a higher loss; a score's loss is 1 - score.
    cmp = compare([1 - s for s in ref.scores()], [1 - s for s in cand.scores()], reference)
    report.comparison = cmp
    report.p_worse, report.p_better = (
        (cmp.wilcoxon_p_worse, cmp.wilcoxon_p_better)
        if test == "wilcoxon"
        else (cmp.sign_p_worse, cmp.sign_p_better)
    )
    report.blocked = report.p_worse < alpha
    head = (
        f"on {cmp.n} task cases {candidate} scores {cand.score:.3f}, {reference} {ref.score:.3f}"
        f" (worse on {cmp.worse}, better on {cmp.better}; {test} p_worse={report.p_worse:.3g})"
    )
    if report.blocked:
        report.reasons = [
            f"task cases: {candidate} is significantly worse than the {reference}: {head};"
            f" worst: {worst_cases(ref, cand)}"
        ]
    else:
        report.reasons = [f"task cases: {head}"]
    return report


def with_tasks(promote: bool, reasons: list[str], tasks: TaskReport) -> tuple[bool, list[str]]:
    """The gate's verdict once the task cases are in: blocked rejects, a pass adds its evidence."""
    if tasks.blocked:
        return False, [*(reasons if not promote else []), *tasks.reasons]
    return promote, [*reasons, *tasks.reasons] if promote else reasons


def worst_cases(reference: BenchmarkReport, candidate: BenchmarkReport) -> str:
    """The cases the candidate lost most on, each with both scores and what was wrong."""
    pairs = sorted(
        zip(reference.results, candidate.results, strict=True),
        key=lambda p: p[1].score - p[0].score,
    )
    shown = [
        f"{c.id} [{c.category}] {r.score:.2f} -> {c.score:.2f}"
        + (f" ({c.why()})" if c.why() else "")
        for r, c in pairs[:WORST_SHOWN]
        if c.score < r.score
    ]
    return "; ".join(shown) or "none lost by a whole case"


def category_table(report: TaskReport) -> list[dict[str, Any]]:
    """Rows of (category or source, cases, each side's mean score), categories first."""
    rows = []
    names = list(report.reports)
    first = report.reports[names[0]] if names else None
    if first is None:
        return []
    for kind, label in (("categories", "category"), ("sources", "source")):
        for group, stats in getattr(first, kind).items():
            row: dict[str, Any] = {"group": group, "kind": label, "cases": stats.cases}
            for name in names:
                row[name] = getattr(report.reports[name], kind)[group].score
            rows.append(row)
    row = {"group": "all", "kind": "all", "cases": report.cases}
    row.update({name: report.reports[name].score for name in names})
    rows.append(row)
    return rows


def task_markdown(report: TaskReport) -> list[str]:
    """The report's task section: verdict, per-category/source table, the cases lost."""
    names = list(report.reports)
    lines = ["## Task cases", "", f"Files: {', '.join(report.files) or '-'}", ""]
    lines += [f"- {r}" for r in report.reasons]
    if not names:
        return [*lines, ""]
    lines += ["", "| group | cases | " + " | ".join(names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    for row in category_table(report):
        label = row["group"] if row["kind"] != "source" else f"source: {row['group']}"
        scores = " | ".join(f"{row[n]:.3f}" for n in names)
        lines.append(f"| {label} | {row['cases']} | {scores} |")
    return [*lines, ""]


BUILTIN_DIR = Path(__file__).parent / "data"


def resolve_case_files(paths: Sequence[str], root: Path) -> list[Path]:
    """Case file paths from config: `builtin:NAME` is a shipped set (`deployment/data/NAME.jsonl`),
    `~` is expanded, relative paths are taken from `root` (the data folder)."""
    out = []
    for p in paths:
        if p.startswith("builtin:"):
            out.append(BUILTIN_DIR / f"{p.removeprefix('builtin:')}.jsonl")
            continue
        path = Path(p).expanduser()
        out.append(path if path.is_absolute() else root / path)
    return out
