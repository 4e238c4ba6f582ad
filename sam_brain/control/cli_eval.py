"""`samctl eval`: task cases on demand, and docs-grounded cases made from the training's docs.

`samctl eval VERSION [--against VERSION|base] [--cases FILE ...]` answers the cases with both
models (greedy, through the gate's model: mlx-lm, else torch; adapters swapped on one loaded
base), prints the scores per category and per source with the gate's paired test, and writes
the report under `<data>/reports/`. It works on the home directly, like `samctl export`: it needs
no daemon, and a running one is not disturbed (the registry is only read).

`samctl eval make-cases --from-docs [PATH ...] --out FILE [--teacher]` writes keyword cases from
the docs (default: `sources.docs_paths`), from headings and key terms, or asked of the teacher
configured in `[teacher]`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_brain.config import Config
from sam_brain.control.cli_client import open_home, print_doc
from sam_brain.errors import BackendUnavailable, BadRequest
from sam_brain.fsutil import write_text_atomic
from sam_brain.home import Home

if TYPE_CHECKING:  # the model stack loads only when `samctl eval` runs, not for every command
    from deployment.task_gate import TaskReport


def evaluate(args: argparse.Namespace, config: Config) -> int:
    if args.version == "make-cases":
        return make_cases(args, config)
    if args.from_docs is not None or args.out:
        raise BadRequest("--from-docs and --out belong to `samctl eval make-cases`")
    root = open_home(config)
    try:
        home = root.for_training(args.training)  # its versions and its own gate_cases
        report, path = run_eval(home, args.version, args.against, args.cases or None)
    finally:
        root.close()
    if args.json:
        print_doc({"report": str(path), **report.to_dict()}, True)
    else:
        print_table(report, path)
    return 0


def run_eval(
    home: Home, version: str, against: str | None, cases: list[str] | None
) -> tuple[TaskReport, Path]:
    """Answer the cases with `version` and `against` and write the report; returns both.

    Raises:
        BadRequest: No case files, a malformed one, or the same model on both sides.
        NotFound: An unknown version.
        BackendUnavailable: Neither mlx-lm nor torch can load the base model.
    """
    from deployment.cases import load_case_files
    from deployment.task_gate import compare_on_cases, resolve_case_files
    from sam_brain.hub import resolve_model
    from sam_brain.train.release import configured_base_ref, gate_exclusive

    cfg = home.config
    files = resolve_case_files(cases if cases is not None else cfg.deployment.gate_cases, home.data)
    if not files:
        raise BadRequest("no case files: give --cases FILE or set deployment.gate_cases")
    loaded = load_case_files(files)
    candidate = _side(home, version)
    if against is None:
        active = home.versions.current()
        against = active.version if active and active.version != candidate[0] else "base"
    reference = _side(home, against)
    if reference[0] == candidate[0]:
        raise BadRequest(f"{version} against itself: choose another --against")
    run = gate_exclusive(str(resolve_model(configured_base_ref(home))))
    if run is None:
        raise BackendUnavailable("no model to answer with: install mlx-lm, or torch + peft")
    report: TaskReport = run(
        lambda model: compare_on_cases(
            model,
            loaded,
            [reference, candidate],
            reference[0],
            candidate[0],
            files=[str(f) for f in files],
            alpha=cfg.deployment.gate_alpha,
            max_tokens=cfg.deployment.gate_case_max_tokens,
        )
    )
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    out = home.reports_dir / f"tasks-{candidate[0]}-vs-{reference[0]}-{stamp}.json"
    write_text_atomic(out, json.dumps(report.to_dict(), indent=2))
    home.store.add_event(
        "benchmarked",
        {"version": candidate[0], "against": reference[0], "report": str(out), **report.summary()},
    )
    return report, out


def _side(home: Home, name: str) -> tuple[str, str | None]:
    if name == "base":
        return "base", None
    v = home.versions.get(name)
    return v.version, v.adapter_path


def print_table(report: TaskReport, path: Path) -> None:
    from deployment.task_gate import category_table

    names = list(report.reports)
    print(f"{report.cases} task cases from {', '.join(report.files)}")
    header = f"{'group':32} {'cases':>5} " + " ".join(f"{n:>10}" for n in names)
    print(header)
    for row in category_table(report):
        label = row["group"] if row["kind"] != "source" else f"source: {row['group']}"
        scores = " ".join(f"{row[n]:>10.3f}" for n in names)
        print(f"{label[:32]:32} {row['cases']:>5} {scores}")
    cmp = report.comparison
    if cmp is not None:
        verdict = "significantly worse" if report.blocked else "not significantly worse"
        print(
            f"{report.candidate} vs {report.reference}: better on {cmp.better}, worse on"
            f" {cmp.worse}, ties {cmp.ties}; {report.test} p_worse={report.p_worse:.3g}"
            f" p_better={report.p_better:.3g} ({verdict} at alpha {report.alpha:g})"
        )
    for reason in report.reasons if report.blocked else []:
        print(reason)
    print(f"report: {path}")


def make_cases(args: argparse.Namespace, config: Config) -> int:
    from sam_brain.train.doc_cases import (
        DocCases,
        cases_from_docs,
        cases_from_docs_with_teacher,
        write_cases,
    )

    if args.from_docs is None or not args.out:
        raise BadRequest("usage: samctl eval make-cases --from-docs [PATH ...] --out FILE")
    paths = [Path(p).expanduser() for p in (args.from_docs or config.sources.docs_paths)]
    if not paths:
        raise BadRequest("no docs: give --from-docs PATH or set sources.docs_paths")
    exclude = config.sources.exclude
    made: DocCases
    if args.teacher:
        made = cases_from_docs_with_teacher(
            build_teacher(config), paths, max_cases=args.max_cases, exclude=exclude
        )
    else:
        made = cases_from_docs(paths, max_cases=args.max_cases, exclude=exclude)
    if not made.cases:
        why = ", ".join(f"{n} {k}" for k, n in made.skipped.items()) or "no sections"
        raise BadRequest(f"no cases made from {made.sections} doc sections ({why})")
    out = Path(args.out).expanduser()
    write_cases(made.cases, out)
    doc: dict[str, Any] = {
        "out": str(out),
        "cases": len(made.cases),
        "sections": made.sections,
        "skipped": dict(made.skipped),
    }
    if made.errors:
        doc["teacher_errors"] = made.errors
    print_doc(doc, args.json)
    return 0


def build_teacher(config: Config) -> Any:
    """The `[teacher]` of the config (its key comes from the environment only)."""
    from sam_brain import registry

    cls = registry.load(registry.TEACHERS, config.teacher.provider, "teacher")
    return cls(config.teacher)
