"""`samctl deploy | canary | promote | stats | history`: releasing versions by hand.

Each command goes through the daemon when it runs (so serving switches at once) and works on the
home directly when it does not.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sam_brain.config import Config, data_dir
from sam_brain.control.cli_client import Client, error_from_http, open_home, print_doc
from sam_brain.errors import DaemonUnreachable


def deploy(args: argparse.Namespace, config: Config) -> int:
    """deploy / canary / promote: through the daemon when it runs, else on the home."""
    client = Client.for_config(args.url, config)
    try:
        client.call("GET", "/api/health")  # before staging a copy the daemon may never take
    except DaemonUnreachable:
        return _deploy_offline(args, config)
    with contextlib.ExitStack() as stack:
        if args.command == "deploy":
            body: dict[str, Any] = {
                "path": stack.enter_context(staged(Path(args.path), config)),
                "dry_run": args.dry_run,
            }
            if args.description:
                body["description"] = args.description
            path = "/api/deploy"
        elif args.command == "canary":
            target = args.target
            if Path(target).expanduser().is_dir():
                folder = stack.enter_context(staged(Path(target), config))
                body, path = {"path": folder}, "/api/canary"
            else:
                body, path = {"version": target}, "/api/canary"
            if args.traffic is not None:
                body["traffic"] = args.traffic
        else:
            body, path = {}, "/api/promote"
        body["training"] = args.training
        try:
            code, doc = client.call("POST", path, body)
        except DaemonUnreachable:
            return _deploy_offline(args, config)
    if code >= 400:
        raise error_from_http(code, doc)
    print_doc(doc, args.json)
    return 0


@contextlib.contextmanager
def staged(folder: Path, config: Config) -> Iterator[str]:
    """The folder as the daemon may take it: itself when inside the home or an import dir, else
    a copy under `<data>/imports/` (the daemon only takes adapters from there over HTTP; the CLI
    takes any path). Symlinks are copied as links, so registering skips them too."""
    src = folder.expanduser().resolve()
    data = data_dir(config)
    roots = [data, *(Path(d).expanduser() for d in config.deployment.import_dirs)]
    if any(src.is_relative_to(r.resolve()) for r in roots) or not src.is_dir():
        yield str(src)
        return
    (data / "imports").mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="stage-", dir=data / "imports"))
    try:
        # Checkpoints (numbered files) stay behind: only the deployable files are registered.
        skip = shutil.ignore_patterns("[0-9]*")
        shutil.copytree(src, tmp / src.name, symlinks=True, ignore=skip)
        yield str(tmp / src.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _deploy_offline(args: argparse.Namespace, config: Config) -> int:
    from deployment import canary
    from sam_brain.hub import resolve_model
    from sam_brain.train.release import configured_base_ref, release, start_canary_from

    root = open_home(config)
    try:
        home = root.for_training(args.training)
        if args.command == "deploy":
            ref = configured_base_ref(home)
            base = "" if args.dry_run else str(resolve_model(ref))
            outcome = release(
                home,
                Path(args.path).expanduser(),
                base_model_dir=base,
                base_ref=ref,
                description=args.description or f"deployed from {args.path}",
                dry_run=args.dry_run,
            )
            print_doc(
                {"version": outcome.version, "action": outcome.action, "reasons": outcome.reasons},
                args.json,
            )
        elif args.command == "canary":
            traffic = args.traffic or config.deployment.canary_steps[0]
            v = start_canary_from(home, args.target, traffic)
            print_doc({"canary": v.version, "traffic": traffic}, args.json)
        else:
            v = canary.promote(home.versions)
            print_doc({"promoted": v.version}, args.json)
    finally:
        root.close()
    return 0


def history(args: argparse.Namespace, config: Config) -> int:
    home = open_home(config)
    try:
        if args.command == "history":
            events = home.store.events(None, args.limit)
            if args.json:
                print_doc(events, True)
            for e in [] if args.json else reversed(events):
                print(f"{e['ts']}  {e['kind']:20} {json.dumps(e['data'], default=str)}")
        else:
            versions = home.store.versions()
            by_status: dict[str, int] = {}
            for v in versions:
                by_status[v.status] = by_status.get(v.status, 0) + 1
            active = home.versions.current()
            print_doc(
                {
                    "total_versions": len(versions),
                    "by_status": by_status,
                    "active": active.version if active else None,
                    "rollback_target": (
                        t.version if (t := home.versions.rollback_target()) else None
                    ),
                    "runs": home.store.run_counts(),
                },
                args.json,
            )
    finally:
        home.close()
    return 0


def export(args: argparse.Namespace, config: Config) -> int:
    """`samctl export VERSION --format F --out DIR [--quant Q]`: works on the home directly."""
    from sam_brain.train.exports import export_version_cmd

    root = open_home(config)
    try:
        doc = export_version_cmd(
            root.for_training(args.training),
            args.version,
            args.format,
            Path(args.out).expanduser(),
            args.quant,
            force=args.force,
        )
    finally:
        root.close()
    print_doc(doc, args.json)
    return 0
