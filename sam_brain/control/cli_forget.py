"""`samctl data forget` and `samctl data compact`: the privacy and housekeeping commands.

Both work on the home directly (no daemon needed) under the pool's write lock, so a running
daemon's ingest waits for them. `forget` first counts what it would remove (that is all
`--dry-run` does), then asks for confirmation unless `--yes` is given.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from sam_brain.control.cli_client import print_doc
from sam_brain.errors import BadRequest

if TYPE_CHECKING:
    from sam_brain.home import Home


def selector(args: argparse.Namespace) -> Any:
    from sam_brain.pipeline.forget_rules import Selector, parse_date

    if args.match is not None and not args.match.strip():
        raise BadRequest("--match: give some text to look for")
    sel = Selector(
        source=args.source or "",
        session=(args.session or "").strip(),
        project=(args.project or "").strip(),
        before=parse_date(args.before) if args.before else None,
        match=args.match or "",
    )
    if not sel.given():
        raise BadRequest(
            "data forget: give at least one of --source, --session, --project, --before, --match"
        )
    return sel


def forget(home: Home, args: argparse.Namespace) -> int:
    from sam_brain.pipeline.forget import forget as run_forget

    sel = selector(args)
    plan = run_forget(home, sel, dry_run=True)
    # A session or project rule is worth recording even when nothing matches yet: it keeps
    # that session or project out of every later ingest.
    nothing = not plan.samples and not plan.files and not (sel.session or sel.project)
    if args.dry_run or nothing:
        _show(plan.to_dict(), args.json)
        return 0
    if not args.yes:
        if not sys.stdin.isatty():
            raise BadRequest("data forget: pass --yes to confirm (or --dry-run to only count)")
        _show(plan.to_dict(), False)
        answer = input(f"Forget {plan.samples} samples for good? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing forgotten")
            return 0
    _show(run_forget(home, sel, dry_run=False).to_dict(), args.json)
    return 0


def _show(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_doc(doc, True)
        return
    versions = doc.pop("versions")
    runs = doc.pop("runs")
    print_doc(doc, False)
    if versions:
        print("versions trained on forgotten data (retrain, or delete them):")
        for v in versions:
            extra = f", built on {v['built_on']}" if "built_on" in v else ""
            print(f"  {v['version']} ({v['status']}, run {v['run_id']}{extra})")
    elif runs:
        print(f"runs that read forgotten data: {', '.join(r['run_id'] for r in runs)}")
    else:
        print("no version was trained on it")


def compact(home: Home, args: argparse.Namespace) -> int:
    from sam_brain.pipeline.archive_prune import prune_archive
    from sam_brain.pipeline.ingest import maybe_compact
    from sam_brain.pool import file_lock

    before = home.pool.version_count()
    with file_lock(home.pool.lock_path):
        removed = maybe_compact(home, force=True)
        archive = prune_archive(home)
    cfg = home.config.pipeline
    print_doc(
        {
            "versions_before": before,
            "versions_removed": removed,
            "versions_now": home.pool.version_count(),
            "keep_versions": cfg.pool_keep_versions,
            "keep_days": cfg.pool_keep_days,
            "archive_files_before": archive.files_before,
            "archive_removed": len(archive.removed),
            "archive_protected": archive.protected,
            "archive_mb_now": round(archive.mb_after, 1),
        },
        args.json,
    )
    return 0
