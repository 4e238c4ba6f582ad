"""`samctl doctor [--repair]`: check every part of the home, print each finding and its fix.

`--repair` does the safe fixes: a damaged state.db is set aside and its versions rebuilt from
their folders; a damaged pool goes back to its previous readable LanceDB version; a damaged
active adapter is rolled back; versions.json is rewritten. Nothing a user made is deleted.
"""

from __future__ import annotations

import argparse

from sam_brain.config import Config, data_dir, default_home
from sam_brain.doctor import diagnose, heal_active, repair_pool
from sam_brain.errors import StateDamaged
from sam_brain.home import Home
from sam_brain.recovery import set_aside


def doctor(args: argparse.Namespace, config: Config) -> int:
    data = data_dir(config)
    if args.repair:
        for line in repair(config):
            print(f"repaired: {line}")
    findings = diagnose(default_home(), data)
    for f in findings:
        print(f.line())
    problems = [f for f in findings if not f.ok]
    print(f"{len(problems)} problem(s)" if problems else "everything is healthy")
    return 12 if problems else 0


def repair(config: Config) -> list[str]:
    """The safe fixes, in order; returns one line per thing done."""
    data = data_dir(config)
    done: list[str] = []
    try:
        home = Home.open(config)
    except StateDamaged:  # only a file SQLite refuses is set aside, never on other errors
        moved = set_aside(data / "state.db")
        done.append(f"state.db set aside as {moved}")
        home = Home.open(config)
    try:
        if home.rebuilt:
            done.append(f"versions rebuilt from their folders: {', '.join(home.rebuilt)}")
        pool = repair_pool(data)
        if pool:
            done.append(pool)
        healed = heal_active(home.versions)
        if healed:
            done.append(healed)
        home.versions.write_index()
        done.append("versions.json rewritten")
    finally:
        home.close()
    return done
