"""`samctl`: the control CLI.

`status` and `train` talk to the daemon over HTTP. `list`, `current`, `ingest` and `data` work
directly on the home (SQLite transactions and the pool's write lock make that safe next to a
running daemon); `rollback` asks the daemon first so serving switches at once, and falls back to
the home when the daemon is down. Errors print one line; exit codes are listed in the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sam_brain.config import Config, data_dir
from sam_brain.config_load import load_config
from sam_brain.control import cli_data, cli_deploy, cli_doctor, cli_teach
from sam_brain.control.cli_client import Client, error_from_http, open_home, print_doc
from sam_brain.errors import DaemonUnreachable, SamBrainError, TrainingFailed

EXIT_CODES = """exit codes: 0 ok, 1 error, 2 bad usage/config/request, 3 not found, 4 conflict,
5 backend or model unavailable, 6 collector failed, 7 training failed, 8 promotion rejected,
9 daemon unreachable, 10 daemon already running, 11 export failed, 12 damaged state
(samctl doctor names the damage and the fix), 13 teacher error, 14 teacher budget spent today"""


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    try:
        code, doc = Client.for_config(args.url, config).call("GET", "/api/self")
        if code >= 400 or not isinstance(doc, dict) or "training_stats" not in doc:
            raise error_from_http(code, doc)  # one line, not a KeyError on a missing key
    except DaemonUnreachable:
        from sam_brain.control.status import self_status

        home = open_home(config)
        try:
            doc = self_status(home)
        finally:
            home.close()
    if args.json:
        print_doc(doc, True)
        return 0
    ts = doc["training_stats"]
    print(doc["explanation"].split(" Problems: ")[0])
    for problem in doc.get("problems") or []:
        print(f"problem: {problem}")
    print(f"daemon: {doc['status'].get('daemon')}  backend: {doc['status'].get('backend', '-')}")
    gate = f", {ts['model_gate']}" if ts.get("model_gate") else ""
    print(f"version: {ts['model_version']} (deployed {ts['deployed_at']}{gate})")
    lt = ts["last_training"]
    print(
        f"last run: {lt['run_id']} {lt['status']} ({lt['samples_count']} samples) {lt.get('reason') or ''}"
    )
    for note in lt.get("notes") or []:
        print(f"  {note}")
    td = ts["training_data"]
    print(
        f"samples: {td['total_samples']} total, {td['new_samples']} new / {td['min_for_training']} "
        f"needed, ready: {td['ready_to_train']}"
    )
    dep = ts["deployment"]
    print(f"versions: {dep['total_versions']}, rollback available: {dep['rollback_available']}")
    if dep.get("canary"):
        c = dep["canary"]
        print(
            f"canary: {c['version']} ({c.get('gate', '-')}) at {c['percent']}% of conversations"
            f" since {c['since']}"
        )
    return 0


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 20) -> str:
    """The last `width` values as block characters, lowest to highest (flat: all the lowest)."""
    tail = values[-width:]
    if not tail:
        return ""
    low, high = min(tail), max(tail)
    span = high - low or 1.0
    return "".join(SPARKS[round((v - low) / span * (len(SPARKS) - 1))] for v in tail)


def _loss_values(client: Client, run_id: str) -> list[float]:
    """The run's stored training losses, oldest first ([] from a daemon without the endpoint)."""
    try:
        code, doc = client.call("GET", f"/api/runs/{run_id}/loss")
    except SamBrainError:
        return []
    if code != 200:
        return []
    return [p["train_loss"] for p in doc.get("points", []) if p.get("train_loss") is not None]


def _follow(client: Client, run_id: str, show_bar: bool) -> int:
    bar = None
    if show_bar:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="step", desc=run_id)
    while True:
        _, doc = client.call("GET", "/api/training")
        run = next((r for r in doc["runs"] if r["run_id"] == run_id), None)
        if run is None:
            time.sleep(0.5)
            continue
        p = run.get("progress") or {}
        if bar is not None and p:
            bar.total = p.get("total_steps") or bar.total
            bar.n = p.get("step", 0)
            loss = p.get("train_loss")
            bar.set_postfix(
                loss=f"{loss:.3f}" if loss is not None else "-",
                trend=sparkline(_loss_values(client, run_id)) or "-",
                val=p.get("val_loss"),
                tok_s=p.get("tokens_per_sec"),
            )
            bar.refresh()
        if run["status"] in ("completed", "failed", "cancelled", "interrupted"):
            if bar is not None:
                bar.close()
            print(f"run {run_id}: {run['status']} {run.get('reason') or ''}".rstrip())
            if run["status"] != "completed":
                raise TrainingFailed(f"run {run_id} {run['status']}: {run.get('reason')}")
            return 0
        time.sleep(0.5)


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    client = Client.for_config(args.url, config)
    if args.cancel:
        _, doc = client.call("POST", "/api/train/cancel", {})
        print("cancel requested" if doc.get("cancelled") else "no run in progress")
        return 0
    code, doc = client.call("POST", "/api/train", {"force": args.force})
    if code == 409 and "reason" in doc:
        print(f"not training: {doc['reason']} (use --force to train anyway)")
        return 4
    if code >= 400:
        raise error_from_http(code, doc)
    run_id = doc["run_id"]
    print(
        f"joined run {run_id}, already training"
        if doc.get("joined")
        else f"training run {run_id} started"
    )
    if args.wait or args.follow:
        return _follow(client, run_id, args.follow)
    return 0


def cmd_ingest(args: argparse.Namespace, config: Config) -> int:
    from sam_brain import registry
    from sam_brain.pipeline.ingest import ingest
    from sam_brain.pipeline.tokens import message_counter, window_tokens

    if args.from_archive != (not args.paths) or (args.from_archive and args.source != "sessions"):
        raise SamBrainError("ingest: give paths, or `sessions --from-archive` without paths")
    home = open_home(config)
    try:
        if args.from_archive:
            from sam_brain.pipeline.archive import ingest_from_archive

            quiet = 0.0 if args.now else config.sources.quiet_minutes
            report = ingest_from_archive(home, quiet_minutes=quiet)
            print_doc(report.to_dict(), args.json)
            return 0
        paths = [Path(p).expanduser().resolve() for p in args.paths]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise SamBrainError(f"no such file or directory: {', '.join(missing)}")
        cls = registry.load(registry.COLLECTORS, args.source, "collector")
        if args.source == "sessions":
            dirs = [p for p in paths if p.is_dir()]
            files = [p for p in paths if p.is_file()]
            collector = cls(
                dirs=dirs,
                quiet_minutes=0.0 if args.now else config.sources.quiet_minutes,
                max_tokens=window_tokens(config),
                count=message_counter(config),
                archive_dir=home.archive_dir if config.sources.archive_transcripts else None,
                exclude=config.sources.exclude,
                forget_file=home.data / "forget.json",
            )
            report = ingest(home, collector, files or None)
        elif args.source == "git":
            collector = cls(
                repos=paths,
                bot_authors=list(config.sources.git_bot_authors),
                max_diff_chars=config.sources.git_max_diff_chars,
                exclude=config.sources.exclude,
            )
            report = ingest(home, collector)
        elif args.source == "docs":
            report = ingest(home, cls(paths=paths, exclude=config.sources.exclude))
        else:
            # Read the named files as records: never move or touch the user's own files.
            from sam_brain.pipeline.ingest import store_result

            records: list[object] = []
            for p in paths:
                for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
                    records.extend(_read_jsonl(f))
            d = home.data / "distill"
            collector = cls(
                inbox=home.distill_inbox,
                rejects_path=d / "rejects.jsonl",
                processed_dir=d / "processed",
            )
            result, rejects = collector.ingest_records(records)
            report = store_result(home, "distill", result)
            report.dropped["rejected"] += len(rejects)
    finally:
        home.close()
    print_doc(report.to_dict(), args.json)
    return 0


def _read_jsonl(path: Path) -> list[object]:
    """Parsed lines; a line that is not JSON stays a string so validation rejects it by name."""
    out: list[object] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                out.append(line)
    return out


def cmd_versions(args: argparse.Namespace, config: Config) -> int:
    if args.command == "rollback":
        try:
            code, doc = Client.for_config(args.url, config).call(
                "POST", "/api/rollback", {"version": args.version} if args.version else {}
            )
            if code >= 400:
                raise error_from_http(code, doc)
            active = (doc["version"] or {}).get("version", "base")
            print(f"{doc['action']}; active version: {active}")
            return 0
        except DaemonUnreachable:
            pass
    home = open_home(config)
    try:
        if args.command == "list":
            versions = home.store.versions()
            if args.json:
                print_doc([v.to_dict() for v in versions], True)
            for v in [] if args.json else versions:
                mark = "*" if v.status == "active" else " "
                print(
                    f"{mark} {v.version:10} {v.status:12} {v.gate or '-':8} {v.created_at}  "
                    f"run {v.run_id}  {v.training_samples} samples  {v.checksum[:12]}"
                )
            if not versions and not args.json:
                print("no versions yet")
        elif args.command == "current":
            cur = home.versions.current()
            print(cur.version if cur else "base (no adapter active)")
        else:
            from sam_brain.train.release import rollback_or_abort

            what, now = rollback_or_abort(home, args.version)
            print(f"{what}; active version: {now.version if now else 'base'}")
    finally:
        home.close()
    return 0


def cmd_dev(args: argparse.Namespace, config: Config) -> int:
    if args.dev_command == "tiny-model":
        from sam_brain.dev.tinymodel import build_tiny_model

        path = build_tiny_model(Path(args.path), hidden_size=args.hidden, num_layers=args.layers)
        print(f"tiny model written to {path}")
    elif args.dev_command == "real-model":
        from sam_brain.dev.realmodel import build_real_model

        path = build_real_model(Path(args.path) if args.path else None)
        print(f"SmolLM2-135M-Instruct written to {path}")
    else:
        from sam_brain.dev.examples import write_example_sessions

        files = write_example_sessions(Path(args.path), n_sessions=args.n, seed=args.seed)
        print(f"wrote {len(files)} example transcripts under {args.path}")
    return 0


def cmd_config(args: argparse.Namespace, config: Config) -> int:
    if args.config_command == "docs":
        from sam_brain.configdoc import render_config_doc

        print(render_config_doc(), end="")
    else:
        from sam_brain.control.apitoken import is_loopback, token_path

        if not is_loopback(config.api.host):
            print(
                f"warning: api.host = {config.api.host!r} is off-loopback: anyone who can reach"
                f" port {config.api.port} can try the API; every request then needs the token in"
                f" {token_path(data_dir(config))} (see docs/operations.md)",
                file=sys.stderr,
            )
        print("config OK")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sam_brain.control.cli_parser import build

    return build(EXIT_CODES)


HANDLERS = {
    "status": cmd_status,
    "train": cmd_train,
    "ingest": cmd_ingest,
    "data": cli_data.data,
    "list": cmd_versions,
    "current": cmd_versions,
    "rollback": cmd_versions,
    "dev": cmd_dev,
    "config": cmd_config,
    "deploy": cli_deploy.deploy,
    "canary": cli_deploy.deploy,
    "promote": cli_deploy.deploy,
    "stats": cli_deploy.history,
    "history": cli_deploy.history,
    "export": cli_deploy.export,
    "doctor": cli_doctor.doctor,
    "teach": cli_teach.teach,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        if not args.url:
            host = "127.0.0.1" if config.api.host in ("0.0.0.0", "::") else config.api.host
            args.url = f"http://{host}:{config.api.port}"
        code = HANDLERS[args.command](args, config)
        sys.stdout.flush()  # inside the try: a reader that left (`| head`) is handled below
        return code
    except SamBrainError as err:
        print(f"samctl: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `samctl ... | head`: the reader left. Point stdout at /dev/null so the interpreter's
        # final flush does not raise again, and exit as a command killed by SIGPIPE would.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except (RuntimeError, OSError) as err:  # a damaged file below us (LanceDB, the disk)
        print(
            f"samctl: {err.__class__.__name__}: {_first_line(err)}; run `samctl doctor`",
            file=sys.stderr,
        )
        return 1


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else "no detail"


if __name__ == "__main__":
    sys.exit(main())
