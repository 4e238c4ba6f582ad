"""Data-pipeline benchmarks: extraction speed, freshness, and the whole ingest against teich.

`extract`: our session extraction (discover, parse, thread, curate; no scrub or dedup) against
a bare `orjson` parse of every line of the same files (goal: ours within 2x of the parse time).
`pipeline`: the whole ingest (extract, scrub, curate, dedup, write the pool) against `teich
extract claude` + `teich convert` on the same corpus (goal: 10x teich's throughput), plus what
each redacts of the ../shared secret positives embedded in a transcript.
`freshness`: the real daemon watching a folder; sessions are written one by one and the pool is
polled until each session's samples are stored and trainable (`ready_after <= now`).

Run from the repository root (each takes a few minutes; `--quick` is a smoke-sized run):
    .venv/bin/python bench/ingest.py extract [--mb 200] [--quick]
    .venv/bin/python bench/ingest.py pipeline [--mb 100] [--teich PATH] [--quick]
    .venv/bin/python bench/ingest.py freshness [--sessions 20] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/ingest.py` works
from bench.common import MB
from bench.freshness import bench_freshness

# `teich convert` stops with AttributeError on this fixture's non-object JSON lines (`"massive
# error"`, `42`, `[1]`), so the comparison corpus leaves it out for both tools.
TEICH_CRASHES = ("synthetic/edge_cases.jsonl",)


class NoCursors:
    """A cursor store that has seen nothing: every session is new."""

    def get_cursor(self, key: str) -> str | None:
        return None


def bare_parse(files: list[Path]) -> int:
    """The anchor: read every file and `orjson.loads` each non-empty line (bad lines skipped)."""
    import orjson

    n = 0
    for path in files:
        for line in path.read_bytes().split(b"\n"):
            if line:
                try:
                    orjson.loads(line)
                    n += 1
                except orjson.JSONDecodeError:
                    pass
    return n


def bench_extract(args: argparse.Namespace) -> None:
    from collectors.sessions import SessionCollector

    size = 5 * MB if args.quick else int(args.mb * MB)
    with common.temp_dir("extract") as tmp:
        corpus, build_s = common.timed(lambda: common.build_session_corpus(Path(tmp) / "p", size))
        print(f"corpus: {corpus.bytes / MB:.1f} MB, {len(corpus.files)} files, "
              f"{corpus.copies} copies, built in {build_s:.1f}s")  # fmt: skip
        bare_parse(corpus.files)  # warm the page cache (and orjson) for both sides
        best: dict[str, tuple[float, int]] = {}
        rounds = 1 if args.quick else args.repeat
        for _ in range(rounds):
            lines, t_bare = common.timed(lambda: bare_parse(corpus.files))
            result, t_ours = common.timed(
                lambda: SessionCollector([corpus.root]).collect(NoCursors())
            )
            for name, t, n in (("bare", t_bare, lines), ("ours", t_ours, len(result.samples))):
                if name not in best or t < best[name][0]:
                    best[name] = (t, n)
        print(f"machine: {common.machine_load()}")
        mbytes = corpus.bytes / MB
        common.print_table(
            f"Extraction of {mbytes:.1f} MB of transcripts (best of {rounds})",
            ["pipeline", "seconds", "MB/s", "output"],
            [
                ["bare orjson line parse (anchor)", best["bare"][0], mbytes / best["bare"][0],
                 f"{best['bare'][1]:,} records"],
                ["ours: SessionCollector.collect (parse, thread, curate)", best["ours"][0],
                 mbytes / best["ours"][0], f"{best['ours'][1]:,} samples"],
            ],
        )  # fmt: skip
        ratio = best["ours"][0] / best["bare"][0]
        common.report_ratio("extract ours/bare time", ratio, "<= 2.0", ratio <= 2.0)


def _config(home: Path, sessions: Path, quiet_minutes: float) -> Any:
    import tomllib

    from sam_brain.config_load import parse_config

    path = common.write_ingest_config(
        home, sessions, 8765, quiet_minutes
    )  # the port is never opened here
    return parse_config(tomllib.loads(path.read_text(encoding="utf-8")), str(path))


def run_ours(home_dir: Path, sessions: Path) -> tuple[Any, float, float]:
    """The whole ingest of every session under `sessions` into a fresh home.

    Returns:
        The ingest report, wall-clock seconds and CPU seconds (all threads).
    """
    from sam_brain.home import Home
    from sam_brain.pipeline.ingest import ingest, make_collectors

    home_dir.mkdir(parents=True, exist_ok=True)
    home = Home.open(_config(home_dir, sessions, 0.0))
    try:
        collector = make_collectors(home)["sessions"]
        cpu = common.cpu_seconds()
        report, wall = common.timed(lambda: ingest(home, collector))
        return report, wall, common.cpu_seconds() - cpu
    finally:
        home.close()


def our_texts(home_dir: Path, sessions: Path) -> str:
    """Every stored sample's text (what a secret must not be found in)."""
    from sam_brain.home import Home

    home = Home.open(_config(home_dir, sessions, 0.0))
    try:
        return "\n".join(
            t for s, _ in home.pool.samples() for t in common.plain_strings(s.messages)
        )
    finally:
        home.close()


def run_teich(teich: str, sessions: Path, work: Path) -> tuple[float, float, list[Any], str]:
    """`teich extract claude` then `teich convert`.

    Returns:
        Wall-clock seconds, CPU seconds (teich and its worker processes), the output rows, and
        what went wrong ("" when nothing did).
    """
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    staged, out = work / "staged", work / "teich.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), common.cpu_seconds()
    extract = [teich, "extract", "claude", "--sessions-dir", str(sessions), "--out", str(staged)]
    # extract ends by asking whether to upload to Hugging Face: answer no on stdin.
    proc = subprocess.run(extract, input="n\n", capture_output=True, text=True, env=env, cwd=work)
    if not staged.is_dir():
        return 0.0, 0.0, [], f"teich extract failed ({proc.returncode}): {proc.stderr[-500:]}"
    proc = subprocess.run(
        [teich, "convert", str(staged), "--out", str(out)], capture_output=True, text=True,
        env=env, cwd=work, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - start, common.cpu_seconds() - cpu
    if proc.returncode != 0 or not out.exists():
        return seconds, cpu, [], f"teich convert failed ({proc.returncode}): {proc.stderr[-500:]}"
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines() if line]
    return seconds, cpu, rows, ""


def find_teich(flag: str | None) -> str | None:
    """The teich executable: --teich, $TEICH, or `teich` on PATH."""
    for candidate in (flag, os.environ.get("TEICH"), shutil.which("teich")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def secret_outcomes(marked: list[tuple[str, str, list[str]]], output: str) -> dict[str, Any]:
    """Count secrets per outcome: redacted (context kept, value gone), leaked, dropped.

    A value counts as leaked only next to its own marker, so a common word that is also a
    secret value ("password") elsewhere in the output is not a false leak.
    """
    counts: dict[str, Any] = {"redacted": 0, "leaked": 0, "dropped": 0, "leaks": []}
    counts["leaked_kinds"] = Counter[str]()
    for marker, kind, values in marked:
        windows = [output[m : m + 4000] for m in common.find_all(output, marker + "\n")]
        if any(v in w for v in values for w in windows):
            counts["leaked"] += 1
            counts["leaked_kinds"][kind.split(":")[0]] += 1
            counts["leaks"].append(f"{marker} {kind}")
        elif windows:
            counts["redacted"] += 1
        else:
            counts["dropped"] += 1
    return counts


def bench_pipeline(args: argparse.Namespace) -> None:
    size = 3 * MB if args.quick else int(args.mb * MB)
    teich = None if args.no_teich else find_teich(args.teich)
    with common.temp_dir("pipeline") as tmp:
        work = Path(tmp)
        corpus, build_s = common.timed(
            lambda: common.build_session_corpus(
                work / "projects", size, vary_text=True, exclude=TEICH_CRASHES
            )
        )
        print(f"corpus: {corpus.bytes / MB:.1f} MB, {len(corpus.files)} files, "
              f"{corpus.copies} copies (text ciphered per copy), built in {build_s:.1f}s")  # fmt: skip
        report, t_ours, cpu_ours = run_ours(work / "ours", corpus.root)
        mbytes = corpus.bytes / MB
        rows = [["ours: collect + scrub + curate + dedup + pool write", t_ours, cpu_ours,
                 mbytes / t_ours, f"{report.stored:,} samples "
                 f"({report.dropped.get('duplicate', 0):,} dups dropped, "
                 f"{sum(report.redactions.values()):,} redactions)"]]  # fmt: skip
        problem = "" if teich else "teich not run (--no-teich, or not found: pass --teich)"
        if teich:
            t_teich, cpu_teich, teich_rows, problem = run_teich(
                teich, corpus.root, work / "teich-run"
            )
            if not problem:
                rows.insert(0, ["teich extract claude + teich convert (anchor)", t_teich,
                                cpu_teich, mbytes / t_teich, f"{len(teich_rows):,} rows"])  # fmt: skip
        print(f"machine: {common.machine_load()}")
        common.print_table(
            f"Whole ingest of {corpus.bytes / MB:.1f} MB of transcripts",
            ["pipeline", "wall s", "CPU s", "MB/s (wall)", "output"],
            rows,
        )
        if problem:
            print(f"\nratio pipeline ours/teich throughput: n/a ({problem})")
        else:
            ratio = t_teich / t_ours
            common.report_ratio("pipeline ours/teich throughput", ratio, ">= 10", ratio >= 10)
            # teich anonymises with a process per core; ours runs on one core (plus I/O threads).
            print(f"CPU time: teich {cpu_teich:.1f}s, ours {cpu_ours:.1f}s "
                  f"({cpu_teich / cpu_ours:.1f}x less for ours)")  # fmt: skip
        taught = our_taught_calls(work / "ours", corpus.root)
        print_coverage(corpus.root, report, taught, None if problem else teich_rows)
        compare_secrets(work / "secrets", teich)


REJECTED = ("The user doesn't want to proceed with this tool use", "[Request interrupted by user")


def raw_calls(root: Path) -> tuple[int, set[tuple[str, str]]]:
    """Tool calls in the transcripts (distinct ids per file), and the (file, id) rejected."""
    import orjson

    seen: set[tuple[str, str]] = set()
    rejected: set[tuple[str, str]] = set()
    for path in sorted(root.rglob("*.jsonl")):
        key = path.stem.removeprefix("agent-")
        for line in path.read_bytes().split(b"\n"):
            try:
                rec = orjson.loads(line) if line else None
            except orjson.JSONDecodeError:
                continue
            msg = rec.get("message") if isinstance(rec, dict) else None
            blocks = msg.get("content") if isinstance(msg, dict) else None
            for b in blocks if isinstance(blocks, list) else ():
                if not isinstance(b, dict):
                    continue
                if b.get("type") == "tool_use":
                    seen.add((str(path), str(b.get("id"))))
                elif b.get("type") == "tool_result" and b.get("is_error"):
                    text = b.get("content")
                    if isinstance(text, str) and text.lstrip().startswith(REJECTED):
                        rejected.add((key, str(b.get("tool_use_id"))))
    return len(seen), rejected


def our_taught_calls(home_dir: Path, sessions: Path) -> list[str]:
    """The tool call ids our stored samples teach (assistant messages not marked `weight: 0`)."""
    from sam_brain.home import Home

    home = Home.open(_config(home_dir, sessions, 0.0))
    try:
        return [
            str(c.get("id"))
            for s, _ in home.pool.samples(kind="sft")
            for m in s.messages
            if m.get("role") == "assistant" and m.get("weight", 1) != 0
            for c in m.get("tool_calls") or ()
        ]
    finally:
        home.close()


def print_coverage(
    root: Path, report: Any, taught: list[str], teich_rows: list[Any] | None
) -> None:
    """How much of the agents' work each tool turns into training targets (issue 11)."""
    seen, rejected = raw_calls(root)
    rejected_ids = {tid for _, tid in rejected}
    total = report.coverage.get("total", {})
    ours = total.get("tool_calls_supervised", 0)
    ours_rejected = sum(c in rejected_ids for c in taught)
    rows = [["ours", f"{seen:,}", f"{ours:,} ({ours / max(seen, 1):.1%})", f"{ours_rejected:,} "
             f"(pairs: {total.get('preference_pairs', 0):,})", "by name", "newest branch only"]]  # fmt: skip
    if teich_rows is not None:
        calls = [c for r in teich_rows for m in r.get("messages") or () if m.get("role") == "assistant"
                 for c in m.get("tool_calls") or ()]  # fmt: skip
        tools = [m for r in teich_rows for m in r.get("messages") or () if m.get("role") == "tool"]
        unknown = sum(m.get("name") == "unknown_tool" for m in tools)
        taught_rejected = sum(c.get("id") in rejected_ids for c in calls)
        rows.insert(0, ["teich (anchor)", f"{seen:,}", f"{len(calls):,} ({len(calls) / max(seen, 1):.1%})",
                        f"{taught_rejected:,}", f"{unknown:,} of {len(tools):,} `unknown_tool`",
                        "branches concatenated"])  # fmt: skip
    common.print_table(
        "Coverage: tool calls in the transcripts that become supervised targets",
        ["tool", "calls seen", "calls taught", "rejected calls taught", "tool results",
         "rewinds"],
        rows,
    )  # fmt: skip
    lost = {k.split(":", 1)[1]: v for k, v in total.items() if k.startswith("tool_calls_lost:")}
    print(
        "ours, calls not taught by reason: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(lost.items()))
    )


def compare_secrets(work: Path, teich: str | None) -> None:
    """Embed every secret positive in one transcript; count what each tool lets through."""
    oracle = _secret_oracle()
    positives = common.secret_texts()
    if not positives or oracle is None:
        print(
            "\nsecrets: ../shared/fixtures/secrets or tests/pipeline/test_scrub.py absent; skipped"
        )
        return
    marked, texts = [], []
    for i, row in enumerate(positives):
        marker = f"snippet {i:03d}"
        texts.append(f"# {marker}\n{row['text']}")
        marked.append((marker, row["kind"], oracle(row, row["text"])))
    sessions = work / "projects" / "-home-dev-demo"
    common.secret_session(sessions, texts, "0b8e7c52-3f0e-4c8e-9a41-5b8f2f1d3c77")
    run_ours(work / "ours", sessions.parent)
    results = {"ours": secret_outcomes(marked, our_texts(work / "ours", sessions.parent))}
    if teich:
        _, _, teich_rows, problem = run_teich(teich, sessions.parent, work / "teich-run")
        if not problem:
            text = "\n".join(
                t for row in teich_rows for t in common.plain_strings(row.get("messages"))
            )
            results["teich"] = secret_outcomes(marked, text)
    common.print_table(
        f"Secrets: {len(marked)} positives from ../shared/fixtures/secrets in one transcript",
        ["tool", "redacted", "leaked", "not in output", "leaked by scanner family"],
        [
            [k, v["redacted"], v["leaked"], v["dropped"], _kinds(v["leaked_kinds"])]
            for k, v in results.items()
        ],
    )
    for name, outcome in results.items():
        more = f" and {len(outcome['leaks']) - 30} more" if len(outcome["leaks"]) > 30 else ""
        print(f"\n{name} leaked: {', '.join(outcome['leaks'][:30]) or 'nothing'}{more}")


def _kinds(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.most_common()) or "-"


def _secret_oracle() -> Any:
    """tests/pipeline/test_scrub.py's `_secrets(row, text)`: the values that must not survive."""
    import importlib.util

    path = common.REPO / "tests" / "pipeline" / "test_scrub.py"
    spec = importlib.util.spec_from_file_location("bench_scrub_oracle", path)
    if spec is None or spec.loader is None or not path.exists():
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda row, text: [v for v in module._secrets(row, text) if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bench", choices=["extract", "pipeline", "freshness"])
    p.add_argument("--quick", action="store_true", help="smoke-sized run (a few seconds)")
    p.add_argument("--mb", type=float, help="corpus size in MB (extract 200, pipeline 100)")
    p.add_argument("--repeat", type=int, default=2, help="extract: timed rounds, best kept")
    p.add_argument("--teich", help="pipeline: the teich executable (default $TEICH or PATH)")
    p.add_argument("--no-teich", action="store_true", help="pipeline: measure ours alone")
    p.add_argument("--sessions", type=int, default=20, help="freshness: sessions written")
    p.add_argument("--quiet-minutes", type=float, default=0.05, help="freshness: quiet period")
    args = p.parse_args(argv)
    if args.mb is None:
        args.mb = 200 if args.bench == "extract" else 100
    print(f"bench ingest {args.bench}: {common.machine_load()}")
    {"extract": bench_extract, "pipeline": bench_pipeline, "freshness": bench_freshness}[
        args.bench
    ](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
