"""Exports of released versions: one on request (`samctl export`), the active one automatically.

Kept apart from release.py, whose job is the gate and roll-out; both record events in the store.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sam_brain.errors import SamBrainError
from sam_brain.home import Home
from sam_brain.train.release import configured_base_ref

log = logging.getLogger(__name__)


def export_version_cmd(
    home: Home, version: str, fmt: str, out: Path, quant: str | None = None, force: bool = False
) -> dict[str, Any]:
    """`samctl export`: one version in one format, verified, recorded as an event."""
    from deployment.export import check_destination, export_version
    from sam_brain.hub import resolve_model

    v = home.versions.get(version)
    check_destination(Path(out))  # refuse a user's folder before any model is looked up
    base = resolve_model(configured_base_ref(home) if not v.base_model else v.base_model)
    result = export_version(Path(v.adapter_path), base, fmt, out, quant, force=force)
    doc = result.to_dict()
    home.store.add_event(
        "exported",
        {
            "version": version,
            "format": fmt,
            "out": str(out),
            "quant": quant,
            "skipped": doc.get("skipped"),
        },
    )
    return doc


def export_active(home: Home) -> list[str]:
    """Export the active version to every `deployment.export_formats` not done yet (idempotent)."""
    active = home.versions.current()
    done: list[str] = []
    if active is None:
        return done
    for fmt in home.config.deployment.export_formats:
        out = home.data / "exports" / active.version / fmt
        if (out / "export.json").exists():
            continue
        try:
            export_version_cmd(home, active.version, fmt, out)
            done.append(fmt)
        except SamBrainError as err:  # an export problem must not stop serving
            log.warning("automatic %s export of %s failed: %s", fmt, active.version, err)
            home.store.add_event(
                "export_failed", {"version": active.version, "format": fmt, "reason": str(err)}
            )
    return done
