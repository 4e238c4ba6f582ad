"""The serving benchmark's report: the latency table and the ratio lines its goals are judged by.

`bench/serve.py` measures; this prints. Medians throughout; the adapter switch's added latency is
the median of paired differences (first request after a change minus the same-adapter request
right after it), never below the in-process swap time.
"""

from __future__ import annotations

import os
import statistics
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def report(
    r: dict[str, Any], hidden: int, layers: int, vocab: int, tokens: int, rate: float
) -> None:
    med = statistics.median
    load = os.getloadavg()
    print(f"model: Qwen2 hidden {hidden}, {layers} layers, vocab {vocab}; LoRA r8 on q/k/v/o")
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine)")
    print("\n| measurement | ours (ms, median) | mlx-lm (ms, median) |\n|---|---:|---:|")
    print(
        f"| first request after an adapter change (HTTP, 1 token) | "
        f"{med(r['ours_switch']):.1f} | {med(r['mlx_switch']):.1f} |"
    )
    print(
        f"| same-adapter request (HTTP, 1 token) | "
        f"{med(r['ours_steady']):.1f} | {med(r['mlx_steady']):.1f} |"
    )
    print(
        f"| in-process: resident swap vs load(base, adapter) | "
        f"{med(r['swap_ms']):.2f} | {med(r['load_ms']):.1f} |"
    )
    print(
        f"| routed /v1/chat/completions vs direct generate ({tokens} tokens) | "
        f"{med(r['routed']):.1f} | {med(r['direct']):.1f} |"
    )
    print(
        f"\ncompletion tokens: routed {r['tokens']}, direct {r['direct_tokens']}; "
        f"same text: {r['same_text']}"
    )

    # The switch's own cost: what the first request after a change takes beyond the same-adapter
    # request right after it (median of the paired differences, steadier under load than a
    # difference of medians; ours at least the in-process swap time, which it can fall below).
    def added(switched: list[float], steady: list[float]) -> float:
        return med([a - b for a, b in zip(switched, steady, strict=True)])

    extra_ours = max(added(r["ours_switch"], r["ours_steady"]), med(r["swap_ms"]))
    extra_theirs = added(r["mlx_switch"], r["mlx_steady"])
    switch = extra_theirs / extra_ours
    print(
        f"ratio adapter switch added latency mlx-lm/ours: {switch:.1f}x (goal >= 20x) "
        f"{'PASS' if switch >= 20 else 'MISS'} ({extra_theirs:.1f} ms vs {extra_ours:.1f} ms)"
    )
    inproc = med(r["load_ms"]) / med(r["swap_ms"])
    print(f"ratio adapter switch in-process load(base, adapter)/resident swap: {inproc:.1f}x")
    total = med(r["mlx_switch"]) / med(r["ours_switch"])
    print(f"ratio first request after an adapter change mlx-lm/ours (1 token): {total:.1f}x")
    overhead = med(r["routed"]) / med(r["direct"]) - 1
    ok = "PASS" if overhead <= 0.05 else "MISS"
    print(f"ratio routed chat overhead vs direct generate: {overhead:+.1%} (goal <= 5%) {ok}")
    s = r["self"]
    service = s["service"]
    print(
        f"/api/self one request at a time (idle): median {med(service):.1f} ms, "
        f"max {max(service):.1f} ms: about {1000 / med(service):.0f} requests/s at most"
    )
    for label in ("idle", "busy"):
        lat, errors, achieved = s[label]
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        extra = ""
        if label == "busy":
            ok = "PASS" if p99 <= 50 and s["training_throughout"] and not errors else "MISS"
            extra = (
                f" (goal <= 50 ms) {ok}; training running throughout: {s['training_throughout']}"
            )
        print(
            f"ratio /api/self p99 {label} at {achieved:.0f} req/s of {rate:.0f}: {p99:.1f} ms "
            f"(p50 {p50:.1f}, max {max(lat):.1f}, {len(lat)} requests, {errors} errors){extra}"
        )
