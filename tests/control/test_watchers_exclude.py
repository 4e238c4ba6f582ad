"""The file watcher drops events of `sources.exclude` paths before anything reads them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sam_brain.control.watchers import Watchers
from sam_brain.pipeline.exclude import PathRules


def test_excluded_paths_are_not_queued(tmp_path: Path) -> None:
    root = tmp_path / "projects"
    for name in ("-home-dev-acme", "-home-dev-demo"):
        (root / name).mkdir(parents=True)
    rules = PathRules(["/home/dev/acme", "*/notes"])

    async def scenario() -> dict[str, set[Path]]:
        watchers = Watchers(asyncio.get_running_loop(), rules.match_file)
        watchers.add("sessions", root, (".jsonl",))
        watchers.start()
        try:
            await asyncio.sleep(0.3)
            (root / "-home-dev-acme" / "a.jsonl").write_text("{}\n")
            (root / "-home-dev-demo" / "notes").mkdir()
            (root / "-home-dev-demo" / "notes" / "n.jsonl").write_text("{}\n")
            (root / "-home-dev-demo" / "b.jsonl").write_text("{}\n")
            return await asyncio.wait_for(watchers.batches(debounce_s=1.0), timeout=10)
        finally:
            watchers.stop()

    batch = asyncio.run(scenario())
    assert batch == {"sessions": {root / "-home-dev-demo" / "b.jsonl"}}
