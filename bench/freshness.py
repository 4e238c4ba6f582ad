"""Freshness benchmark: how soon a written session becomes trainable in the real daemon.

The daemon (`python -m sam_brain.control.daemon serve`) watches a folder; sessions are written one by one
and the pool is polled every 50 ms until each session's samples are stored and trainable
(`ready_after <= now`). Run through `bench/ingest.py freshness` (its options).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import common


def bench_freshness(args: argparse.Namespace) -> None:
    from sam_brain.dev.examples import example_session

    n = 3 if args.quick else args.sessions
    quiet = args.quiet_minutes
    with common.temp_dir("fresh") as tmp:
        work = Path(tmp)
        sessions = work / "projects" / "-home-dev-demo"
        sessions.mkdir(parents=True)
        port = common.free_port()
        config = common.write_ingest_config(work, sessions.parent, port, quiet)
        env = {**os.environ, "SAM_BRAIN_HOME": str(work), "SAM_BRAIN_CONFIG": str(config),
               "HF_HUB_OFFLINE": "1"}  # fmt: skip
        log = (work / "daemon.log").open("w")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "sam_brain.control.daemon", "serve", "--config", str(config)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=common.REPO,
        )  # fmt: skip
        try:
            _, startup = common.timed(lambda: common.wait_listening(port, daemon, 120.0))
            print(f"daemon listening after {startup:.1f}s")
            from sam_brain.pool import Pool

            pool = Pool(work / "data" / "pool")
            stored: list[float] = []
            trainable: list[float] = []
            for i in range(n):
                lines = example_session(f"fresh:{i}").lines
                path = sessions / f"{lines[0]['sessionId']}.jsonl"
                path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
                mtime = path.stat().st_mtime
                ready = mtime + quiet * 60
                key = str(path)
                seen = None
                deadline = time.time() + 60 + quiet * 60
                while time.time() < deadline:
                    now = time.time()
                    if seen is None and pool.count(source_keys=[key]):
                        seen = now
                    if seen is not None and pool.count(source_keys=[key], ready_before=now):
                        stored.append(seen - mtime)
                        trainable.append(now - ready)
                        break
                    time.sleep(0.05)
                else:
                    print(f"session {i}: not trainable within the deadline")
        finally:
            daemon.terminate()
            _, stop = common.timed(lambda: daemon.wait(timeout=60))
            print(f"daemon stopped in {stop:.1f}s")
            log.close()
        print(f"machine: {common.machine_load()}")
        if not trainable:
            print((work / "daemon.log").read_text()[-2000:])
            raise SystemExit("freshness: no session reached the pool")
        rows = []
        for name, values in (
            ("written -> stored (s)", stored),
            ("quiet end -> trainable (s)", trainable),
        ):
            ordered = sorted(values)
            p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
            rows.append([name, len(values), statistics.median(values), p90, max(values)])
        common.print_table(
            f"Freshness: {n} sessions, quiet_minutes = {quiet} ({quiet * 60:.0f} s), 50 ms polling",
            ["delay", "sessions", "median", "p90", "max"],
            rows,
        )
        median = statistics.median(trainable)
        common.report_ratio(
            "freshness median delay after quiet end (s)", median, "<= 5 s", median <= 5
        )
