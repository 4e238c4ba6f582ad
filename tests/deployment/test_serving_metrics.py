"""Per-version serving metrics: bounded latency percentiles, tokens/s and their Prometheus text."""

from __future__ import annotations

import json
import re

from deployment.canary import HealthLimits, health_problems
from deployment.serving_metrics import LATENCY_WINDOW, VersionMetrics, prometheus_lines


def test_percentiles_cover_only_the_recent_window() -> None:
    m = VersionMetrics("v1.0.0")
    for ms in range(1, 1501):
        m.record(float(ms), False, 500.0)
    assert len(m.latency_window) == LATENCY_WINDOW == 1000  # the last 1000: 501..1500
    assert m.latency_quantile(0.5) == 1000.5
    assert abs(m.latency_quantile(0.9) - 1400.1) < 1e-9
    assert abs(m.latency_quantile(0.99) - 1490.01) < 1e-9
    assert (m.requests, m.mean_latency_ms, m.latency_ms_max) == (1500, 750.5, 1500.0)
    assert VersionMetrics("v").latency_quantile(0.99) == 0.0


def test_tokens_per_second_is_tokens_over_generation_time() -> None:
    m = VersionMetrics("v1.0.0")
    assert m.tokens_per_second == 0.0
    m.record(600.0, False, 500.0, tokens=10, seconds=0.5)
    m.record(1600.0, False, 500.0, tokens=30, seconds=1.5, swap_ms=4.0)
    m.record(50.0, True, 500.0)  # a failed request generated nothing
    assert m.tokens_per_second == 20.0
    assert (m.completion_tokens, m.errors, m.swaps, m.swap_ms_total) == (40, 1, 1, 4.0)


def test_shadow_requests_count_and_are_judged_like_served_ones() -> None:
    m = VersionMetrics("v1.0.1")
    for i in range(10):
        m.record(100.0, i < 3, 500.0, shadow=i % 2 == 0)
    assert (m.requests, m.errors, m.shadow_requests, m.shadow_errors) == (10, 3, 5, 2)
    # The limits are the configured ones, unchanged: 30 % errors over 10 requests breaks 15 %.
    assert health_problems(m, HealthLimits(min_requests=10)) == [
        "error rate 30.0% > 15.0% (3/10 requests)"
    ]


def test_copies_are_independent_and_serialise() -> None:
    m = VersionMetrics("v1.0.0")
    m.record(10.0, False, 500.0, tokens=4, seconds=0.2)
    snapshot = m.copy()
    m.record(30.0, False, 500.0)
    assert (snapshot.requests, list(snapshot.latency_window)) == (1, [10.0])
    doc = json.loads(json.dumps(m.to_dict()))
    assert "latency_window" not in doc
    assert (doc["latency_ms_p50"], doc["latency_ms_p90"], doc["latency_ms_p99"]) == (
        20.0,
        28.0,
        29.8,
    )
    assert doc["tokens_per_second"] == 20.0 and doc["requests"] == 2


def test_prometheus_text_groups_each_family_with_its_type() -> None:
    a, b = VersionMetrics("v1.0.0"), VersionMetrics("v1.0.1")
    for ms in (100.0, 200.0, 300.0):
        a.record(ms, False, 512.0, tokens=8, seconds=0.4)
    b.record(50.0, True, 512.0, shadow=True)
    shadow = {"mirrored": 1, "dropped": 2, "preempted": 0, "skipped": 0, "queued": 0}
    lines = prometheus_lines({"v1.0.1": b, "v1.0.0": a}, shadow)
    declared: list[str] = []
    for line in lines:
        if line.startswith("# TYPE "):
            declared.append(line.split()[2])
            continue
        if line.startswith("#"):
            continue
        name = line.split("{")[0].split()[0]
        # A sample belongs to the family declared last (a summary's _sum and _count too).
        assert declared[-1] in (name, re.sub(r"_(sum|count)$", "", name)), line
    assert len(declared) == len(set(declared))  # no family is declared twice
    assert "# TYPE sam_brain_request_latency_seconds summary" in lines
    assert 'sam_brain_request_latency_seconds{version="v1.0.0",quantile="0.5"} 0.2' in lines
    assert 'sam_brain_request_latency_seconds{version="v1.0.0",quantile="0.99"} 0.298' in lines
    assert 'sam_brain_request_latency_seconds_sum{version="v1.0.0"} 0.6' in lines
    assert 'sam_brain_request_latency_seconds_count{version="v1.0.1"} 1' in lines
    assert 'sam_brain_generation_tokens_per_second{version="v1.0.0"} 20.0' in lines
    assert 'sam_brain_shadow_requests_total{version="v1.0.1"} 1' in lines
    assert "sam_brain_shadow_dropped_total 2" in lines
    assert not [x for x in prometheus_lines({"v": a}) if "shadow_dropped" in x]
