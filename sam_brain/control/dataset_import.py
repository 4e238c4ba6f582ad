"""`samctl ingest dataset FILE` and `POST /api/data/import`: a chat dataset into the pool.

The file is checked whole first (collectors/dataset.py); only a file without malformed rows (or
with `skip_bad`) reaches the pipeline, batch by batch through `store_result` (validate -> scrub
-> dedup -> split), so a malformed row leaves the pool untouched. The answer is the file check
(format, rows, problems) merged with the ingest reports of its batches.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import Any

from sam_brain.config import DEFAULT_TRAINING, Config
from sam_brain.errors import BadRequest, Conflict, NotFound
from sam_brain.home import Home
from sam_brain.pipeline.ingest import IngestReport
from sam_brain.trainings import names


def training_names(config: Config) -> set[str]:
    """The trainings a sample may name: the default one and each `[trainings.NAME]`."""
    return set(names(config))


def import_dataset(
    home: Home,
    path: Path,
    *,
    training: str | None = None,
    fmt: str = "auto",
    skip_bad: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Import one dataset file; returns the check's summary and the merged ingest report.

    Raises:
        BadRequest: an unknown format, or malformed rows (`MalformedRows`, nothing stored);
        NotFound: no such training or file; Conflict: the file changed during the import.
    """
    from collectors.dataset import SOURCE, MalformedRows, batches, check_file
    from sam_brain.pipeline.ingest import store_result
    from sam_brain.pipeline.scrub import Scrubber

    names = training_names(home.config)
    if training is not None and training not in names:
        known = ", ".join(sorted(names, key=lambda n: (n != DEFAULT_TRAINING, n)))
        raise NotFound(f"no training {training!r} (configured: {known})")
    # The default training is the absence of a name, as for every other source.
    name = None if training in (None, DEFAULT_TRAINING) else training
    check = check_file(path, fmt)
    summary = {**check.summary(), "training": name or DEFAULT_TRAINING, "dry_run": dry_run}
    if check.bad_rows and not skip_bad:
        raise MalformedRows(check)
    if check.bad_rows == check.rows:
        raise BadRequest(f"{path}: none of its {check.rows} rows is usable: {check.problems[0]}")
    if dry_run:
        return summary
    scrubber = Scrubber(redact_emails=home.config.pipeline.redact_emails)
    total: IngestReport | None = None
    for batch in batches(check, training=name):
        if not check.unchanged():
            raise Conflict(f"{path} changed while it was imported; import it again")
        report = store_result(home, SOURCE, batch, scrubber=scrubber)
        total = report if total is None else merge_reports(total, report)
    assert total is not None  # batches() yields at least one result
    return {**summary, **total.to_dict()}


def merge_reports(a: IngestReport, b: IngestReport) -> IngestReport:
    """The sum of two reports of one import (counts added; the pool version is the later one)."""
    for key, value in vars(b).items():
        mine = getattr(a, key)
        if isinstance(value, Counter):
            mine.update(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(a, key, mine + value)
    a.pool_version = b.pool_version
    a.coverage = {}
    return a


def cmd_dataset(args: argparse.Namespace, config: Config) -> int:
    """`samctl ingest dataset FILE [--training NAME] [--format F] [--skip-bad] [--dry-run]`."""
    from sam_brain.control.cli_client import open_home, print_doc

    if len(args.paths) != 1:
        raise BadRequest("ingest dataset: give exactly one file")
    if args.now or args.from_archive:
        raise BadRequest("ingest dataset: --now and --from-archive are for sessions")
    path = Path(args.paths[0]).expanduser().resolve()
    home = open_home(config)
    try:
        doc = import_dataset(
            home,
            path,
            training=args.training,
            fmt=args.format,
            skip_bad=args.skip_bad,
            dry_run=args.dry_run,
        )
    finally:
        home.close()
    if not args.json:
        how = "detected from its first rows" if doc["format_detected"] else "as given"
        print(f"format: {doc['format']} ({how})")
    print_doc(doc, args.json)
    return 0
