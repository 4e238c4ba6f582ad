"""A scripted teacher answer for `generate` against the packaged samctl schema, with known drops.

Every request of n=5 examples gets, in order: 2 valid examples, 1 unknown command, 1 missing
required argument, 1 argument of the wrong type. The request whose prompt says "batch 4" answers
with prose instead of JSON. Inputs are random words seeded by the prompt, so answers do not
depend on the order requests arrive in and never near-duplicate each other.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from pathlib import Path
from typing import Any

from sam_brain.config_load import parse_config
from sam_brain.home import Home

WORDS = [
    "amber", "basalt", "cobalt", "dune", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kelp", "lagoon", "mesa", "nectar", "onyx", "prairie", "quartz", "reef", "sierra", "tundra",
    "umber", "valley", "willow", "xenon", "yarrow", "zephyr", "acorn", "birch", "cedar", "delta",
    "estuary", "fern", "glacier", "heath", "iris", "jade", "knoll", "lichen", "marsh", "nimbus",
    "orchid", "pebble", "quill", "ridge", "sable", "thistle", "upland", "vortex", "wren", "yew",
]  # fmt: skip


def words(rng: random.Random, n: int = 7) -> str:
    return " ".join(rng.sample(WORDS, n))


def answer(body: dict[str, Any]) -> str:
    prompt = str(body["messages"][-1]["content"])
    n = int(re.search(r"Write (\d+) different", prompt).group(1))  # type: ignore[union-attr]
    if "batch 4:" in prompt:
        return "I am sorry, I cannot produce JSON today."
    rng = random.Random(zlib.crc32(prompt.encode()))
    examples: list[dict[str, Any]] = []
    for j in range(n):
        kind = j % 5
        text = f"{words(rng)} {j}"
        if kind == 0:
            out: dict[str, Any] = {"command": "history", "args": {"limit": j + 3}, "flags": []}
        elif kind == 1:
            out = {
                "command": "export",
                "args": {"version": f"v1.0.{j}", "format": "gguf", "out": f"/tmp/{words(rng, 2)}"},
                "flags": ["force"],
            }
        elif kind == 2:
            out = {"command": "frobnicate", "args": {}, "flags": []}
        elif kind == 3:
            out = {"command": "export", "args": {"version": "v1", "format": "gguf"}, "flags": []}
        else:
            out = {"command": "history", "args": {"limit": "ten"}, "flags": []}
        examples.append({"input": text, "output": out})
    return "Here you go:\n```json\n" + json.dumps(examples) + "\n```"


def per_request(requests: int) -> dict[str, int]:
    """The exact counts `generate` must report for `requests` requests of 5 (batch 4 is prose)."""
    good = requests - (1 if requests >= 4 else 0)
    return {
        "valid": 2 * good,
        "unknown_command": good,
        "missing_required": good,
        "bad_argument_type": good,
        "invalid_json": requests - good,
        "parsed": good,
    }


def open_home(root: Path, **teacher: Any) -> Home:
    doc = {"data_dir": str(root / "home"), "teacher": teacher}
    return Home.open(parse_config(doc))
