"""Does SAM Brain make a real model better? Base vs. adapter on sessions it never trained on.

    python bench/learning.py [--steps 32] [--turns 16] [--scorer mlx|torch] [--out FILE]

The real fixture transcripts (../shared/fixtures/claude-sessions) go through the product's own
ingest (collect, validate, scrub, dedup) into a temporary home. Whole sessions (sample groups) are
held out; the rest trains a LoRA adapter on the real SmolLM2-135M-Instruct model
(`samctl dev real-model`) with the machine's default backend, for a fixed time budget. Then base
and adapter are scored side by side on the held-out sessions: mean loss on supervised tokens (the
gate's paired sign and Wilcoxon tests), loss on tool-call tokens alone, next-action accuracy
(teacher-forced: given the transcript up to an assistant turn, does the greedy output call the same
tool, or answer in text when the transcript did?), JSON validity of generated tool calls, three
generations, and the product gate's own decision on the same held-out rows (its default settings,
as a new user gets them).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATE = 1e-3
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench.common import SESSIONS, machine_load  # noqa: E402
from bench.learning_eval import (  # noqa: E402
    TEXT,
    MemoResident,
    MlxScorer,
    Scorer,
    Scores,
    TorchScorer,
    score,
    turn_points,
)


def ingest_fixtures(home_dir: Path, fixtures: Path, model: Path) -> list[Any]:
    """The fixture sessions through the product's ingest (windows sized in `model`'s tokens)."""
    from sam_brain.config import Config, SourcesConfig, TrainingConfig
    from sam_brain.home import Home
    from sam_brain.pipeline.ingest import ingest, make_collectors

    sources = replace(SourcesConfig(), sessions_dirs=[str(fixtures)], quiet_minutes=0.0)
    training = replace(TrainingConfig(), cuda_base_model=str(model), mlx_base_model=str(model))
    config = Config(data_dir=str(home_dir), sources=sources, training=training)
    home = Home.open(config)
    try:
        report = ingest(home, make_collectors(home)["sessions"])
        print(f"ingest: {report.stored} samples stored, skipped {dict(report.skipped)}")
        return [s for s, _ in home.pool.samples()]
    finally:
        home.close()


def assistant_turns(sample: Any) -> int:
    return sum(1 for m in sample.messages if m.get("role") == "assistant")


def hold_out(samples: list[Any], share: float) -> tuple[set[str], set[str]]:
    """(train groups, held-out groups): whole sessions, chosen by a stable hash, never the largest."""
    from sam_brain.pipeline.split import unit_hash

    turns: dict[str, int] = defaultdict(int)
    for s in samples:
        if s.kind == "sft":
            turns[s.group] += assistant_turns(s)
    largest = max(turns, key=lambda g: turns[g])
    total = sum(turns.values())
    held: set[str] = set()
    for group in sorted(turns, key=lambda g: unit_hash("learning", g)):
        # Whole sessions only, never the largest, and no more than the share (with some slack).
        if group != largest and sum(turns[g] for g in held) + turns[group] <= 1.2 * share * total:
            held.add(group)
    if not held:
        held = {min((g for g in turns if g != largest), key=lambda g: turns[g])}
    return set(turns) - held, held


def write_data(samples: list[Any], train: set[str], data: Path) -> tuple[int, int, int]:
    """train/valid/preference JSONL from the training sessions only (valid: every 20th row)."""
    data.mkdir(parents=True, exist_ok=True)
    rows = [s for s in samples if s.kind == "sft" and s.group in train]
    pairs = [s for s in samples if s.kind == "preference" and s.group in train]
    valid = rows[::20]
    fit = [r for k, r in enumerate(rows) if k % 20]

    def dump(path: Path, items: list[dict[str, Any]]) -> None:
        path.write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))

    dump(data / "train.jsonl", [{"messages": s.messages} for s in fit])
    dump(data / "valid.jsonl", [{"messages": s.messages} for s in valid])
    prefs = [{"prompt": s.messages, "chosen": s.chosen, "rejected": s.rejected} for s in pairs]
    if prefs:
        dump(data / "preference.jsonl", prefs)
    return len(fit), len(valid), len(prefs)


def train(
    model_dir: Path, data: Path, out: Path, steps: int, minutes: float, backend_name: str
) -> tuple[str, Any]:
    """One run of the product's trainer, stopped (best adapter kept) when the budget is spent."""
    from sam_brain import registry
    from sam_brain.config import Config
    from sam_brain.protocols import Progress, TrainSpec

    name, why = registry.choose_backend(backend_name)
    print(f"backend: {name} ({why})")
    # The default profile as a new user gets it (8gb: rank 4 on the last 8 blocks, 2048 tokens),
    # for a short run: one row per optimizer step, a fixed step count (so warm-up and decay fit
    # the run), a higher learning rate; the time cap only guards the benchmark's budget.
    profile = asdict(Config().profile())
    profile.update(
        batch_size=1, grad_accum=1, max_steps=steps, eval_every=steps, save_every=10_000,
        learning_rate=LEARNING_RATE,
    )  # fmt: skip
    spec = TrainSpec("learning", str(model_dir), str(data), str(out), profile, seed=0, resume=False)
    deadline = time.monotonic() + minutes * 60

    def progress(p: Progress) -> None:
        if p.train_loss is not None or p.val_loss is not None:
            print(f"  step {p.step}/{p.total_steps} loss {p.train_loss} val {p.val_loss} "
                  f"tok/s {p.tokens_per_sec}", flush=True)  # fmt: skip

    stop = lambda: time.monotonic() > deadline  # noqa: E731
    return name, registry.backend(name).train(spec, progress, stop)


def gate_decision(resident: Any, test: Path, adapter: Path) -> dict[str, Any]:
    """The product gate's decision on the held-out rows (first version: judged against base)."""
    from deployment.evaluate import evaluate_candidate
    from sam_brain.config import Config
    from sam_brain.train.policies import gate_config

    report = evaluate_candidate(resident, test, str(adapter), None, gate_config(Config()))
    checks = zip(report.reference_generation, report.generation, strict=False)
    return {
        "promote": report.gate.promote, "reasons": report.gate.reasons,
        "seconds": round(report.seconds, 1), "memo_hits": getattr(resident, "hits", 0),
        "generation": [
            {"base": {"repetition": b.repetition, "ended": b.terminated},
             "adapter": {"repetition": c.repetition, "ended": c.terminated}}
            for b, c in checks
        ],
    }  # fmt: skip


def report(
    base: Scores, tuned: Scores, gate: dict[str, Any], info: dict[str, Any]
) -> dict[str, Any]:
    from deployment.stats import compare

    loss = compare(base.losses, tuned.losses, "base")
    common = sorted(set(base.tool_rows) & set(tuned.tool_rows))
    bt = [base.tool_losses[base.tool_rows.index(r)] for r in common]
    tt = [tuned.tool_losses[tuned.tool_rows.index(r)] for r in common]
    tool = compare(bt, tt, "base") if common else None
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    rows = [
        ("held-out loss (supervised tokens)", mean(base.losses), mean(tuned.losses)),
        ("held-out loss (tool-call tokens)", mean(bt), mean(tt)),
        ("next-action accuracy (tool turns)", base.tool_accuracy, tuned.tool_accuracy),
        ("answers in text where the transcript did", base.text_accuracy, tuned.text_accuracy),
        ("tool-call JSON validity", base.json_validity, tuned.json_validity),
    ]
    print(f"\n{'':38} {'base':>10} {'adapter':>10}")
    for name, b, t in rows:
        print(f"{name:38} {b:10.4f} {t:10.4f}")
    print(f"paired loss test: {loss.better} better / {loss.worse} worse of {loss.n}, "
          f"sign p={loss.sign_p_better:.2g}, wilcoxon p={loss.wilcoxon_p_better:.2g}")  # fmt: skip
    if tool:
        print(
            f"tool-token test: {tool.better}/{tool.n} better, wilcoxon p={tool.wilcoxon_p_better:.2g}"
        )
    print(f"calls made: base {base.calls}, adapter {tuned.calls} of {len(base.actions)} turns "
          f"({sum(e != TEXT for e, _ in base.actions)} call a tool in the transcript)")  # fmt: skip
    print(
        f"gate: {'promote' if gate.get('promote') else 'reject'}: {'; '.join(gate.get('reasons', []))}"
    )
    improved = loss.wilcoxon_p_better < 0.05 and tuned.tool_accuracy > base.tool_accuracy
    agrees = bool(gate.get("promote")) == improved
    print(f"goals: loss p<0.05 {loss.wilcoxon_p_better < 0.05}, next-action up "
          f"{tuned.tool_accuracy > base.tool_accuracy}, gate agrees {agrees}")  # fmt: skip
    for k, (b, t) in enumerate(zip(base.generations, tuned.generations, strict=False)):
        print(f"\n--- generation {k + 1} (expected {tuned.actions[k][0]}) ---")
        print(f"base:    {b[:300]!r}\nadapter: {t[:300]!r}")
    return {
        **info, "rows": {n: [b, t] for n, b, t in rows}, "loss_test": asdict(loss),
        "tool_test": asdict(tool) if tool else None, "gate": gate, "agrees": agrees,
        "actions": {"base": base.actions, "adapter": tuned.actions},
        "generations": {"base": base.generations, "adapter": tuned.generations},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", type=Path, help="a real model folder (default: samctl dev real-model)"
    )
    ap.add_argument("--fixtures", type=Path, default=SESSIONS)
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps (one row each)")
    ap.add_argument(
        "--minutes", type=float, default=40.0,
        help="training time guard (a run stopped by it keeps its best validated adapter, which"
        " is the untrained one before the first evaluation)",
    )  # fmt: skip
    ap.add_argument(
        "--held-out", type=float, default=0.25, help="share of assistant turns held out"
    )
    ap.add_argument(
        "--turns", type=int, default=16, help="held-out tool-calling turns for next-action accuracy"
    )
    ap.add_argument(
        "--text-turns", type=int, default=4, help="held-out turns answered in text, scored apart"
    )
    ap.add_argument("--backend", default="auto")
    ap.add_argument(
        "--scorer", choices=("auto", "mlx", "torch"), default="auto",
        help="runtime that scores base and adapter (auto: mlx when the backend is mlx)",
    )  # fmt: skip
    ap.add_argument(
        "--rows", type=int, default=0, help="score only this many held-out rows (0: all)"
    )
    ap.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if not args.fixtures.is_dir():
        print(f"no fixtures at {args.fixtures}", file=sys.stderr)
        return 2
    started = time.monotonic()
    print(f"machine: {machine_load()}")
    if args.model is None:
        from sam_brain.dev.realmodel import build_real_model

        args.model = build_real_model()
    with tempfile.TemporaryDirectory(prefix="sam-learning-") as tmp:
        root = Path(tmp)
        samples = ingest_fixtures(root / "home", args.fixtures, args.model)
        train_groups, held = hold_out(samples, args.held_out)
        test_rows = [s.messages for s in samples if s.kind == "sft" and s.group in held]
        test_rows = test_rows[: args.rows] if args.rows else test_rows
        n_fit, n_valid, n_pairs = write_data(samples, train_groups, root / "data")
        test = root / "test.jsonl"
        test.write_text("".join(json.dumps({"messages": m}) + "\n" for m in test_rows))
        print(f"sessions: {len(train_groups)} train, {len(held)} held out; rows: {n_fit} train, "
              f"{n_valid} valid, {n_pairs} pairs, {len(test_rows)} held-out")  # fmt: skip
        backend, result = train(
            args.model, root / "data", root / "adapter", args.steps, args.minutes, args.backend
        )
        print(f"trained: {result.steps} steps, {result.notes[-1] if result.notes else ''}")
        trained_s = time.monotonic() - started
        points = turn_points(test_rows, args.turns, args.text_turns)
        opts = {"max_length": 2048, "budget": 1536, "max_new": 64}
        adapter = Path(result.adapter_dir)
        resident: Any = None
        use_mlx = args.scorer == "mlx" or (args.scorer == "auto" and backend == "mlx")
        if importlib.util.find_spec("mlx_lm") is not None:  # the gate runs on MLX here
            from deployment.resident import ResidentModel

            resident = MemoResident(ResidentModel(str(args.model)))
        scores = []
        for which in (None, adapter):
            scorer: Scorer = (
                MlxScorer(resident, which) if use_mlx else TorchScorer(args.model, which)
            )
            scores.append(score(scorer, test_rows, points, **opts))
            del scorer
        scored_s = time.monotonic() - started - trained_s
        if resident is None:  # the product gate runs on torch where mlx-lm is missing
            from deployment.torch_scorer import TorchResident

            resident = TorchResident(args.model)
        gate = gate_decision(resident, test, adapter)
        info = {
            "machine": machine_load(), "steps": result.steps, "train_rows": n_fit,
            "held_out_rows": len(test_rows), "train_seconds": round(trained_s, 1),
            "score_seconds": round(scored_s, 1), "scorer": "mlx" if use_mlx else "torch",
            "total_seconds": round(time.monotonic() - started, 1), "metrics": result.metrics,
        }  # fmt: skip
        doc = report(scores[0], scores[1], gate, info)
    print(f"\nfinished in {doc['total_seconds'] / 60:.1f} min ({machine_load()})")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
