"""`make bench`: run every benchmark in turn; each prints its own table and ratio.

Usage: python bench/run_all.py [--quick]   (--quick: smoke sizes, a minute or two in all)
Results worth keeping go to docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ["ingest.py", "dedup.py", "scrub_secrets.py", "train.py", "loss_head.py", "serve.py",
           "export.py"]  # fmt: skip


def main() -> int:
    here = Path(__file__).resolve().parent
    extra = sys.argv[1:]
    failed = []
    for name in BENCHES:
        path = here / name
        if not path.exists():
            continue
        print(f"\n=== bench/{name} {' '.join(extra)}", flush=True)
        t0 = time.monotonic()
        code = subprocess.call([sys.executable, str(path), *extra])
        print(f"=== bench/{name}: exit {code} in {time.monotonic() - t0:.0f}s", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
