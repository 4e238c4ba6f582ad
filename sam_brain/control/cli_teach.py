"""`samctl teach generate|augment|preferences|status|cancel|stats`: teacher jobs on the daemon.

A job runs in the daemon's background slot; `--follow` waits with a progress bar (tqdm), like
`samctl train --follow`. Running the same job again resumes it (same spec, same progress file).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from sam_brain.config import Config, data_dir
from sam_brain.control.cli_client import Client, error_from_http, print_doc
from sam_brain.errors import (
    BadRequest,
    BudgetExhausted,
    DaemonUnreachable,
    SamBrainError,
    TeacherError,
)

JOBS = ("generate", "augment", "preferences")
FINAL = ("done", "budget", "cancelled", "failed")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    t = sub.add_parser("teach", help="teacher jobs: synthetic data, augmentation, preferences")
    tsub = t.add_subparsers(dest="teach_command", required=True)
    for kind, help_text in (
        ("generate", "synthetic examples from a CLI schema (YAML, clitron-style)"),
        ("augment", "better answers for tier-B samples and Q&A grounded in docs"),
        ("preferences", "candidates from the active adapter judged by the teacher -> DPO pairs"),
    ):
        p = tsub.add_parser(kind, help=help_text)
        if kind == "generate":
            p.add_argument("--from", dest="source", required=True,
                           help="schema file, or a packaged schema name (samctl)")  # fmt: skip
            p.add_argument("--batch-size", type=int, help="examples asked per request (10)")
        elif kind == "augment":
            p.add_argument("--source", default="", help="docs folder (default: sources.docs_paths)")
        p.add_argument("--count", type=int, default=0, help="how many to make (0: the default)")
        p.add_argument("--training", default="", help="the named training the samples belong to")
        p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a job-specific option (repeatable)")  # fmt: skip
        p.add_argument("--follow", action="store_true", help="wait with a progress bar")
        p.add_argument("--json", action="store_true")
    s = tsub.add_parser("status", help="the running or last teach jobs")
    s.add_argument("--json", action="store_true")
    tsub.add_parser("cancel", help="stop the running teach job (a rerun resumes it)")
    st = tsub.add_parser("stats", help="teacher spend per day and per job")
    st.add_argument("--json", action="store_true")


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def spec_body(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadRequest(f"--option {item!r}: write KEY=VALUE")
        options[key] = _value(value)
    if getattr(args, "batch_size", None):
        options["batch_size"] = args.batch_size
    source = getattr(args, "source", "") or ""
    if source and Path(source).expanduser().exists():
        source = str(Path(source).expanduser().resolve())  # the daemon's cwd is not ours
    return {
        "kind": args.teach_command,
        "source": source,
        "count": args.count,
        "training": args.training,
        "options": options,
    }


def teach(args: argparse.Namespace, config: Config) -> int:
    client = Client.for_config(args.url, config)
    cmd = args.teach_command
    if cmd in JOBS:
        code, doc = client.call("POST", "/api/teach", spec_body(args))
        if code >= 400:
            raise error_from_http(code, doc)
        if args.json and not args.follow:
            print_doc(doc, True)
            return 0
        print(f"teach job {doc['job_id']} started")
        return follow(client, doc["job_id"], bar=args.follow) if args.follow else 0
    if cmd == "cancel":
        _, doc = client.call("POST", "/api/teach/cancel", {})
        print("cancel requested" if doc.get("cancelled") else "no teach job running")
        return 0
    if cmd == "stats":
        code, doc = _get_or_local(client, "/api/teach/stats", config)
        if code >= 400:
            raise error_from_http(code, doc)
        if args.json:
            print_doc(doc, True)
        else:
            print_stats(doc)
        return 0
    code, doc = _get_or_local(client, "/api/teach", config)
    if code >= 400:
        raise error_from_http(code, doc)
    if args.json:
        print_doc(doc, True)
        return 0
    jobs = ([doc["current"]] if doc.get("current") else []) + [
        j
        for j in doc.get("recent", [])
        if not doc.get("current") or j["job_id"] != doc["current"]["job_id"]
    ]
    if not jobs:
        print("no teach jobs yet")
    for j in jobs:
        print(line(j))
    return 0


def _get_or_local(client: Client, path: str, config: Config) -> tuple[int, Any]:
    """Ask the daemon; when none runs, read the ledger and the job folders from the home."""
    try:
        return client.call("GET", path)
    except DaemonUnreachable:
        from sam_brain.teach.progress import recent_jobs
        from sam_brain.teacher_ledger import Ledger, stats

        data = data_dir(config)
        if path.endswith("/stats"):
            ledger = Ledger(data / "state.db")
            try:
                return 200, stats(ledger, config.teacher)
            finally:
                ledger.close()
        return 200, {"teaching": False, "current": None, "recent": recent_jobs(data)}


def line(j: dict[str, Any]) -> str:
    drops = ", ".join(f"{k} {v}" for k, v in sorted(j.get("counts", {}).items()))
    text = (
        f"{j['job_id']}: {j['state']} {j['done']}/{j['total']} requests, {j['stored']} stored,"
        f" ${j['usd']:.4f}" + (f" ({drops})" if drops else "")
    )
    return text + (f"\n  {j['error']}" if j.get("error") else "")


def print_stats(doc: dict[str, Any]) -> None:
    print(
        f"today ({doc['today']} UTC): ${doc['spent_today_usd']:.4f} of"
        f" ${doc['max_usd_per_day']:.2f}, ${doc['left_today_usd']:.4f} left"
    )
    for title, rows in (("per day", doc["by_day"]), ("per job", doc["by_job"])):
        print(f"{title}:")
        if not rows:
            print("  (no calls yet)")
        for name, s in rows.items():
            print(
                f"  {name}: {s['calls']} calls, {s['input_tokens']} in / {s['output_tokens']} out"
                f" / {s['cache_read_tokens']} cache read / {s['cache_write_tokens']} cache write"
                f" tokens, ${s['usd']:.4f}"
            )


def follow(client: Client, job_id: str, *, bar: bool, poll: float = 0.5) -> int:
    """Wait for `job_id` to end; a progress bar of requests done. Non-zero unless it finished."""
    progress = None
    if bar:
        from tqdm import tqdm

        progress = tqdm(total=0, unit="req", desc=job_id)
    while True:
        _, doc = client.call("GET", "/api/teach")
        job = doc.get("current") or {}
        if job.get("job_id") != job_id:
            job = next((j for j in doc.get("recent", []) if j["job_id"] == job_id), {})
        if job and progress is not None:
            progress.total = job["total"]
            progress.n = job["done"]
            progress.set_postfix(stored=job["stored"], usd=f"{job['usd']:.4f}")
            progress.refresh()
        if job.get("state") in FINAL and not doc.get("teaching"):
            if progress is not None:
                progress.close()
            print(line(job))
            return _exit(job)
        time.sleep(poll)


def _exit(job: dict[str, Any]) -> int:
    state = job["state"]
    if state == "done":
        return 0
    err: SamBrainError
    if state == "budget":
        err = BudgetExhausted(job["error"])
    elif state == "failed":
        err = TeacherError(job["error"])
    else:
        err = SamBrainError(job["error"] or state)
        err.exit_code = 130
    return err.exit_code
