"""How often does a teacher, as judge, pick the answer a person labelled better?

    python bench/judge_alignment.py [--model DIR] [--base-url URL --model-id NAME] [--out FILE]

The hand-labelled alignment set shipped with the gate (`deployment/data/judge_alignment.jsonl`:
requests from the fixture transcripts, the session's own answer against a hand-written bad one,
labelled by reading them) is judged pair by pair in both orders (`deployment.judge.alignment`).
By default the judge is SAM Brain's own OpenAI-compatible chat endpoint serving the real
SmolLM2-135M-Instruct base (`samctl dev real-model`) on loopback, reached through the product's
OpenAI-compatible teacher, as a user would point `[teacher]` at it; `--base-url` judges with any
other OpenAI-compatible server instead. Prints the agreement, the binomial test against chance,
position flips, unreadable replies and the raw verdict counts per order, as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere

from bench.common import machine_load  # noqa: E402


@contextmanager
def served(model_dir: Path, root: Path) -> Iterator[str]:
    """SAM Brain's chat endpoint on the bare base model, on a loopback port; yields its /v1 URL."""
    from aiohttp import web

    from deployment.serving import ChatServer, add_routes
    from sam_brain.dev.teacher_wire import serve_app
    from sam_brain.store import Store
    from sam_brain.versions import Versions

    server = ChatServer(Versions(Store(root / "state.db"), root / "versions"), model_dir)
    app = web.Application()
    add_routes(app, server)
    try:
        with serve_app(app) as url:
            yield url + "/v1"
    finally:
        server.close()


def run(base_url: str, model_id: str, limit: int = 0) -> dict[str, Any]:
    from deployment.judge import alignment, load_alignment
    from sam_brain.config import TeacherConfig
    from teachers.openai_api import OpenAITeacher

    pairs = load_alignment()[: limit or None]
    teacher = OpenAITeacher(
        TeacherConfig(
            provider="openai",
            model=model_id,
            base_url=base_url,
            max_output_tokens=8,
            timeout_seconds=300,
        )
    )
    start = time.perf_counter()
    report = alignment(teacher, pairs)
    seconds = time.perf_counter() - start
    doc = report.to_dict()
    verdicts = doc.pop("verdicts")
    doc["raw_good_first"] = dict(Counter(v["candidate_first"] for v in verdicts))
    doc["raw_good_second"] = dict(Counter(v["incumbent_first"] for v in verdicts))
    doc["judge"] = f"{model_id} at {base_url}"
    doc["seconds"] = round(seconds, 1)
    doc["requests"] = 2 * len(pairs)
    doc["machine"] = machine_load()
    return doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model folder to serve (default: the real model)")
    p.add_argument("--base-url", help="judge with this OpenAI-compatible server instead")
    p.add_argument("--model-id", default="base", help="model name sent to --base-url")
    p.add_argument("--limit", type=int, default=0, help="judge only the first N pairs (smoke)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.base_url:
        doc = run(args.base_url, args.model_id, args.limit)
    else:
        import tempfile

        from sam_brain.dev.realmodel import build_real_model, real_model_dir

        model = args.model or real_model_dir() or build_real_model()
        with (
            tempfile.TemporaryDirectory(prefix="sam-judge-") as tmp,
            served(model, Path(tmp)) as url,
        ):
            doc = run(url, "base", args.limit)
            doc["judge"] = f"SAM Brain's /v1/chat/completions serving {model.name} (base)"
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
