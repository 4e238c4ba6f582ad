"""Secrets benchmark: the scrubber's recall and false positives on four sets.

- fixtures: ../shared/fixtures/secrets (gitleaks' and detect-secrets' test strings; positives must
  lose every secret, negatives must come out unchanged);
- engine rules, development part and held-out part: samples generated from the regexes of the
  rules kingfisher-secret-scanner ships (Betterleaks' and Veles'), split by rule id; the held-out
  part was not looked at while our rules were tuned (sam_brain/pipeline/scrub_corpus.py);
- code look-alikes: ids, digests, hashes and ordinary code near credential words (none may change).

Each set is scrubbed three ways: the whole stack, the engine alone, and our rules without the
engine, so each layer's share shows. Goal: held-out recall >= 0.95 and no look-alike altered.

Run from the repository root (about 20 s):
    .venv/bin/python bench/scrub_secrets.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common  # after the path fix: `python bench/scrub_secrets.py` works

# Not named secrets.py: bench/ is sys.path[0] for its scripts, and that would shadow the stdlib module.


def fixture_oracle() -> Callable[[dict[str, Any], str], list[str]] | None:
    """tests/pipeline/test_scrub.py's `_secrets(row, text)`: the values that must not survive."""
    path = common.REPO / "tests" / "pipeline" / "test_scrub.py"
    spec = importlib.util.spec_from_file_location("bench_secrets_oracle", path)
    if spec is None or spec.loader is None or not path.exists():
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda row, text: [v for v in module._secrets(row, text) if v]


def scrubbers() -> dict[str, Callable[[str], str]]:
    """The whole stack, the engine alone, and our rules without the engine."""
    from sam_brain.pipeline.scrub import Scrubber
    from sam_brain.pipeline.scrub_engine import engine_spans

    full = Scrubber(home="/home/tester")
    ours = Scrubber(home="/home/tester", engine=False)

    def engine_only(text: str) -> str:
        spans = sorted(engine_spans(text))
        out, last = [], 0
        for start, end, _, kind in spans:
            if start >= last:
                out += [text[last:start], f"[REDACTED:{kind}]"]
                last = end
            elif end > last:
                last = end
        return "".join(out) + text[last:]

    return {
        "stack": lambda t: full.scrub_text(t)[0],
        "engine alone": engine_only,
        "ours without engine": lambda t: ours.scrub_text(t)[0],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--show", type=int, default=15, help="missed held-out secrets to list")
    p.add_argument("--quick", action="store_true", help="accepted for run_all (the run is short)")
    args = p.parse_args(argv)
    from sam_brain.pipeline import scrub_corpus as corpus
    from sam_brain.pipeline.scrub_corpus import Example

    print(f"bench secrets: {common.machine_load()}")
    (dev, held, unusable), build_s = common.timed(corpus.engine_examples)
    print(f"engine-rule corpus: {len(dev)} development and {len(held)} held-out samples, "
          f"{unusable} rules with no Python-readable sample, built in {build_s:.1f}s")  # fmt: skip
    oracle = fixture_oracle()
    fixtures = [
        Example(row["kind"], row["text"], secret)
        for row in common.secret_texts()
        for secret in (oracle(row, row["text"]) if oracle else [])
    ]
    negatives = [r["text"] for r in _fixture_negatives()]
    lookalikes = corpus.negatives()
    ways = scrubbers()
    ways["stack"]("warm-up: compile the engine's rules")
    rows, held_missed = [], []
    for name, scrub in ways.items():
        start = time.process_time()
        row: list[Any] = [name]
        for part in (fixtures, dev, held):
            miss = corpus.missed(scrub, part)
            row.append(
                f"{1 - len(miss) / max(len(part), 1):.3f} ({len(part) - len(miss)}/{len(part)})"
            )
            if name == "stack" and part is held:
                held_missed = miss
        row.append(f"{sum(scrub(t) != t for t in negatives)}/{len(negatives)}")
        row.append(f"{sum(scrub(t) != t for t in lookalikes)}/{len(lookalikes)}")
        row.append(time.process_time() - start)
        rows.append(row)
    common.print_table(
        "Secrets: recall (secrets gone) and false positives (texts altered)",
        ["scrubber", "fixtures recall", "dev recall", "held-out recall", "fixture negatives altered",
         "code look-alikes altered", "CPU s"],
        rows,
    )  # fmt: skip
    recall = 1 - len(held_missed) / max(len(held), 1)
    altered = int(rows[0][5].split("/")[0])
    common.report_ratio("held-out recall", recall, ">= 0.95", recall >= 0.95)
    print(f"code look-alikes altered by the stack: {altered} (goal 0: "
          f"{'met' if altered == 0 else 'missed'})")  # fmt: skip
    code = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    texts = [f.read_text(encoding="utf-8", errors="replace") for f in code]
    found, code_s = common.timed(lambda: [h for t in texts for h in corpus.new_layer_hits(t)])
    print(f"real code: {len(code)} stdlib modules, {sum(map(len, texts)) / 1e6:.1f} M characters: "
          f"{len(found)} hits from the context rules and the engine ({code_s:.1f}s)")  # fmt: skip
    for e in held_missed[: args.show]:
        print(f"  missed {e.rule}: {e.text.strip()[:90]!r}")
    return 0


def _fixture_negatives() -> list[dict[str, Any]]:
    import base64
    import json

    path = common.SECRETS / "negatives.b64.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [r | {"text": base64.b64decode(r["text_b64"]).decode("utf-8")} for r in rows]


if __name__ == "__main__":
    sys.exit(main())
