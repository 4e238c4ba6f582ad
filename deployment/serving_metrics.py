"""Per-version serving metrics: counts, latency percentiles, tokens/s, and their Prometheus text.

`VersionMetrics` is one version's window (since the routing last changed): requests, errors,
mean and max latency, process memory, adapter swaps, plus the latencies of its last
`LATENCY_WINDOW` requests (a bounded deque, so memory stays flat however long it serves) for the
p50/p90/p99, and completion tokens over generation seconds for its tokens/s. Requests mirrored to
a canary in shadow mode (`deployment.shadow`) count like served ones and also in
`shadow_requests`. Requests stopped early (the client left, a deadline, a shutdown) count as
requests, never as errors, and also in `cancelled`; requests refused before generation (bad
requests, a full queue) are not recorded at all. `prometheus_lines` renders a snapshot in the Prometheus text format, one
metric family per block (a summary with quantile labels for latency, gauges and counters).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

LATENCY_WINDOW = 1000  # recent requests per version the percentiles are computed over
QUANTILES = (0.5, 0.9, 0.99)


def _window() -> deque[float]:
    return deque(maxlen=LATENCY_WINDOW)


@dataclass
class VersionMetrics:
    """What one version did while serving, since `since` (the start of the current window)."""

    version: str
    since: float = field(default_factory=time.time)
    requests: int = 0  # served and shadow requests
    errors: int = 0
    latency_ms_total: float = 0.0
    latency_ms_max: float = 0.0
    memory_mb: float = 0.0  # process RSS after the latest request this version served
    swaps: int = 0
    swap_ms_total: float = 0.0
    completion_tokens: int = 0
    generation_s_total: float = 0.0  # time spent generating the successful requests' tokens
    shadow_requests: int = 0  # of `requests`: mirrored copies of stable traffic
    shadow_errors: int = 0  # of `errors`: failed mirrored copies
    cancelled: int = 0  # of `requests`: stopped before their end (client gone, deadline, shutdown)
    latency_window: deque[float] = field(default_factory=_window, repr=False, compare=False)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.requests if self.requests else 0.0

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens over generation time, over the whole window (0 before any)."""
        if self.generation_s_total <= 0:
            return 0.0
        return self.completion_tokens / self.generation_s_total

    def latency_quantile(self, q: float) -> float:
        """The `q` quantile (0..1, linear interpolation) of the recent latencies in ms (0: none)."""
        ordered = sorted(self.latency_window)
        if not ordered:
            return 0.0
        pos = q * (len(ordered) - 1)
        low = math.floor(pos)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)

    def record(
        self,
        latency_ms: float,
        error: bool,
        memory_mb: float,
        *,
        tokens: int = 0,
        seconds: float = 0.0,
        swap_ms: float = 0.0,
        shadow: bool = False,
        cancelled: bool = False,
    ) -> None:
        """Count one finished request.

        Args:
            latency_ms: Its wall time.
            error: It failed.
            memory_mb: Process RSS after it.
            tokens: Completion tokens it generated.
            seconds: Generation time of those tokens (prefill included).
            swap_ms: Time its adapter swap took (0: the adapter was in place).
            shadow: It was a mirrored copy of a request the stable version answered.
            cancelled: It was stopped before its end (not an error).
        """
        self.requests += 1
        self.errors += int(error)
        self.latency_ms_total += latency_ms
        self.latency_ms_max = max(self.latency_ms_max, latency_ms)
        self.latency_window.append(latency_ms)
        self.memory_mb = memory_mb
        self.completion_tokens += tokens
        self.generation_s_total += seconds
        if swap_ms:
            self.swaps += 1
            self.swap_ms_total += swap_ms
        self.cancelled += int(cancelled)
        if shadow:
            self.shadow_requests += 1
            self.shadow_errors += int(error)

    def copy(self) -> VersionMetrics:
        """An independent snapshot (the latency window is copied, not shared)."""
        return replace(self, latency_window=deque(self.latency_window, maxlen=LATENCY_WINDOW))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latency_window"}
        d["error_rate"] = self.error_rate
        d["mean_latency_ms"] = self.mean_latency_ms
        for q in QUANTILES:
            d[f"latency_ms_p{q * 100:g}"] = round(self.latency_quantile(q), 3)
        d["tokens_per_second"] = round(self.tokens_per_second, 3)
        return d


def prom_line(name: str, value: float, labels: Mapping[str, str] | None = None) -> str:
    """One Prometheus sample line; label values are escaped (backslash, quote, newline)."""
    if labels:
        inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value}"
    return f"{name} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_lines(
    windows: Mapping[str, VersionMetrics], shadow: Mapping[str, int] | None = None
) -> list[str]:
    """Prometheus text lines for the per-version windows, one metric family per block.

    Args:
        windows: The metrics window per version name.
        shadow: Shadow-mirror counters (`mirrored`, `dropped`, `preempted`, `skipped`,
            `queued`), when shadow mode is on.
    """
    items = sorted(windows.items())
    out: list[str] = []

    def family(name: str, kind: str, doc: str, value: Any) -> None:
        out.extend((f"# HELP {name} {doc}", f"# TYPE {name} {kind}"))
        out.extend(prom_line(name, value(m), {"version": v}) for v, m in items)

    family(
        "sam_brain_requests_total", "counter", "Chat requests per version.", lambda m: m.requests
    )
    family("sam_brain_errors_total", "counter", "Failed chat requests.", lambda m: m.errors)
    family(
        "sam_brain_cancelled_total",
        "counter",
        "Chat requests stopped early (client gone, deadline, shutdown).",
        lambda m: m.cancelled,
    )
    family(
        "sam_brain_latency_ms",
        "gauge",
        "Mean chat request latency (ms).",
        lambda m: round(m.mean_latency_ms, 3),
    )
    name = "sam_brain_request_latency_seconds"
    out += [
        f"# HELP {name} Chat request latency; quantiles over the last {LATENCY_WINDOW} requests.",
        f"# TYPE {name} summary",
    ]
    for v, m in items:
        for q in QUANTILES:
            value = round(m.latency_quantile(q) / 1000, 6)
            out.append(prom_line(name, value, {"version": v, "quantile": f"{q:g}"}))
        out.append(prom_line(f"{name}_sum", round(m.latency_ms_total / 1000, 6), {"version": v}))
        out.append(prom_line(f"{name}_count", m.requests, {"version": v}))
    family(
        "sam_brain_generation_tokens_per_second",
        "gauge",
        "Completion tokens per second of generation.",
        lambda m: round(m.tokens_per_second, 3),
    )
    family("sam_brain_memory_mb", "gauge", "Process RSS (MB).", lambda m: round(m.memory_mb, 1))
    family(
        "sam_brain_shadow_requests_total",
        "counter",
        "Requests mirrored to this version in shadow mode.",
        lambda m: m.shadow_requests,
    )
    if shadow is not None:
        for key in ("mirrored", "dropped", "preempted", "skipped"):
            metric = f"sam_brain_shadow_{key}_total"
            out += [
                f"# HELP {metric} Shadow mirror: requests {key}.",
                f"# TYPE {metric} counter",
                prom_line(metric, shadow.get(key, 0)),
            ]
        out += [
            "# HELP sam_brain_shadow_queued Shadow mirror: requests waiting.",
            "# TYPE sam_brain_shadow_queued gauge",
            prom_line("sam_brain_shadow_queued", shadow.get("queued", 0)),
        ]
    return out


def rss_mb() -> float:
    """Resident memory of this process in MB (psutil; peak RSS where psutil is missing)."""
    try:
        import psutil  # type: ignore[import-untyped]

        return float(psutil.Process().memory_info().rss) / 2**20
    except ImportError:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024
