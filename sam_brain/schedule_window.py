"""Parsing and checking the optional nightly training window (`HH:MM-HH:MM`, local time)."""

from __future__ import annotations

from datetime import datetime, time


def parse_window(text: str) -> tuple[time, time]:
    """Parse `HH:MM-HH:MM`; the window may wrap past midnight (`22:00-06:00`)."""
    try:
        start_s, end_s = text.split("-")
        start = time.fromisoformat(start_s.strip())
        end = time.fromisoformat(end_s.strip())
    except ValueError as err:
        raise ValueError(f"{text!r} is not HH:MM-HH:MM") from err
    if start == end:
        raise ValueError(f"{text!r} is an empty window")
    return start, end


def in_window(text: str, now: datetime) -> bool:
    """True when `now` falls inside the window; an empty window means always."""
    if not text:
        return True
    start, end = parse_window(text)
    t = now.time()
    if start < end:
        return start <= t < end
    return t >= start or t < end
