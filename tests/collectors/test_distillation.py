"""Distillation records: validation, the inbox collector, and the API ingest path."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from collectors.distillation import (
    MAX_TEXT_CHARS,
    DistillationCollector,
    record_samples,
    validate_record,
)
from sam_brain.errors import BadRequest
from sam_brain.protocols import Collector, CollectResult

REASONING = {
    "kind": "reasoning",
    "prompt": "Why is the sky blue?",
    "answer": "Rayleigh scattering.",
}
CORRECTION = {
    "kind": "correction",
    "prompt": "Reverse a list in Python in place.",
    "wrong_answer": "xs = reversed(xs)",
    "corrected_answer": "xs.reverse()",
    "explanation": "reversed() returns an iterator and does not modify the list.",
    "teacher": "claude",
    "tags": ["python"],
}
PREFERENCE = {"kind": "preference", "prompt": "Name a prime.", "chosen": "7", "rejected": "9"}


class DictCursors(dict[str, str]):
    def get_cursor(self, key: str) -> str | None:
        return self.get(key)

    def apply(self, result: CollectResult) -> CollectResult:
        self.update(result.cursors)
        return result


@pytest.fixture
def collector(tmp_path: Path) -> DistillationCollector:
    return DistillationCollector(tmp_path / "inbox", tmp_path / "rejects.jsonl", tmp_path / "done")


def write_inbox(
    collector: DistillationCollector, name: str, lines: list[Any], age: float = 10
) -> Path:
    collector.inbox.mkdir(parents=True, exist_ok=True)
    path = collector.inbox / name
    body = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(body, encoding="utf-8")
    old = time.time() - age
    os.utime(path, (old, old))
    return path


def read_rejects(collector: DistillationCollector) -> list[dict[str, Any]]:
    if not collector.rejects_path.exists():
        return []
    return [json.loads(line) for line in collector.rejects_path.read_text().splitlines()]


def test_reasoning_record() -> None:
    plain = validate_record(REASONING)
    assert plain.source == "distill" and plain.strategy == "distill" and plain.kind == "sft"
    assert plain.tier == "B"
    assert plain.messages == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Rayleigh scattering."},
    ]
    reasoned = validate_record(
        {**REASONING, "reasoning": "Short wavelengths scatter more.", "system": "Be brief."}
    )
    assert reasoned.tier == "A"
    assert reasoned.messages[0] == {"role": "system", "content": "Be brief."}
    assert (
        reasoned.messages[2]["content"] == "Short wavelengths scatter more.\n\nRayleigh scattering."
    )


def test_correction_record_gives_tier_a_sft_and_a_preference_pair() -> None:
    sft, pair = record_samples(CORRECTION)
    assert validate_record(CORRECTION).id == sft.id
    assert (sft.tier, pair.tier) == ("A", "A")
    assert sft.kind == "sft" and sft.messages[-1]["content"] == "xs.reverse()"
    assert sft.meta["explanation"].startswith("reversed()")
    assert sft.meta["teacher"] == "claude" and sft.meta["tags"] == ["python"]
    assert pair.kind == "preference"
    assert pair.messages == [{"role": "user", "content": CORRECTION["prompt"]}]
    assert (pair.chosen, pair.rejected) == ("xs.reverse()", "xs = reversed(xs)")
    assert sft.id != pair.id and sft.group == pair.group and sft.source_key == pair.source_key


def test_preference_record() -> None:
    sample = validate_record(PREFERENCE)
    assert sample.kind == "preference" and sample.tier == "B"
    assert sample.messages == [{"role": "user", "content": "Name a prime."}]
    assert (sample.chosen, sample.rejected) == ("7", "9")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (["not", "an", "object"], "a record must be a JSON object, got array"),
        ({"prompt": "x"}, "field 'kind' is missing"),
        ({"kind": "summary", "prompt": "x"}, "unknown kind 'summary'"),
        ({"kind": "reasoning", "prompt": "x"}, "reasoning: field 'answer' is missing"),
        ({**REASONING, "answer": "   "}, "reasoning: field 'answer' is empty"),
        ({**REASONING, "answer": 42}, "reasoning: field 'answer' must be a string, got number"),
        ({**REASONING, "score": 1}, "reasoning: unknown field 'score'"),
        ({**REASONING, "chosen": "x"}, "reasoning: unknown field 'chosen'"),
        (
            {**REASONING, "prompt": "x" * (MAX_TEXT_CHARS + 1)},
            "reasoning: field 'prompt' is too long",
        ),
        ({**CORRECTION, "corrected_answer": "xs = reversed(xs)"}, "are identical"),
        (
            {**PREFERENCE, "rejected": None},
            "preference: field 'rejected' must be a string, got null",
        ),
        ({**PREFERENCE, "tags": "python"}, "field 'tags' must be a list of strings"),
        ({**PREFERENCE, "tags": ["ok", ""]}, "field 'tags[1]' is empty"),
        ({**PREFERENCE, "id": True}, "field 'id' must be a string or integer"),
        ({**PREFERENCE, "created_at": []}, "field 'created_at' must be a string or number"),
    ],
)
def test_invalid_records_are_rejected_with_a_precise_reason(record: object, reason: str) -> None:
    with pytest.raises(BadRequest) as info:
        validate_record(record)
    assert reason in str(info.value)


def test_ids_are_stable_and_come_from_the_record_id(tmp_path: Path) -> None:
    assert validate_record(REASONING).id == validate_record(dict(REASONING)).id
    # Timestamp and teacher labels do not change the identity of a record.
    assert validate_record({**REASONING, "created_at": 1.5, "teacher": "t"}).id == (
        validate_record(REASONING).id
    )
    assert validate_record({**REASONING, "answer": "Other."}).id != validate_record(REASONING).id
    by_id = validate_record({**REASONING, "id": "r-1"})
    assert by_id.id == validate_record({**REASONING, "id": "r-1", "answer": "Edited."}).id
    assert by_id.meta["record_id"] == "r-1"


def test_collect_ingests_moves_and_rejects(collector: DistillationCollector) -> None:
    assert isinstance(collector, Collector)
    src = write_inbox(
        collector,
        "batch.jsonl",
        [REASONING, "{not json", CORRECTION, "", {"kind": "nope"}, PREFERENCE],
    )
    cursors = DictCursors()
    result = cursors.apply(collector.collect(cursors))

    assert len(result.samples) == 4  # reasoning + correction (2) + preference
    assert {s.meta["line"] for s in result.samples} == {1, 3, 6}
    assert dict(result.skipped) == {"invalid_json": 1, "invalid_record": 1, "blank_line": 1}
    assert not src.exists()
    moved = collector.processed_dir / "batch.jsonl"
    assert moved.read_text() == (
        "".join(
            (x if isinstance(x, str) else json.dumps(x)) + "\n"
            for x in [REASONING, "{not json", CORRECTION, "", {"kind": "nope"}, PREFERENCE]
        )
    )
    assert list(result.cursors) == ["distill:done:batch.jsonl"]
    rejects = read_rejects(collector)
    assert [(r["file"], r["line"]) for r in rejects] == [("batch.jsonl", 2), ("batch.jsonl", 5)]
    assert rejects[0]["reason"].startswith("invalid JSON") and rejects[0]["raw"] == "{not json"
    assert rejects[1]["reason"].startswith("unknown kind 'nope'")

    again = collector.collect(cursors)
    assert again.samples == [] and not again.skipped and read_rejects(collector) == rejects


def test_same_name_later_does_not_overwrite_processed_file(
    collector: DistillationCollector,
) -> None:
    cursors = DictCursors()
    write_inbox(collector, "a.jsonl", [REASONING])
    first = cursors.apply(collector.collect(cursors))
    write_inbox(collector, "a.jsonl", [PREFERENCE])
    second = cursors.apply(collector.collect(cursors))
    assert sorted(p.name for p in collector.processed_dir.iterdir()) == ["a.1.jsonl", "a.jsonl"]
    assert [s.kind for s in first.samples + second.samples] == ["sft", "preference"]


def test_file_still_being_written_is_left_for_next_pass(collector: DistillationCollector) -> None:
    fresh = write_inbox(collector, "fresh.jsonl", [REASONING], age=0)
    partial = write_inbox(collector, "partial.jsonl", [PREFERENCE])
    with partial.open("a") as fh:
        fh.write('{"kind": "reasoning", "prompt": "half')
    os.utime(partial, (time.time() - 10, time.time() - 10))

    result = collector.collect(DictCursors())
    assert result.samples == [] and dict(result.skipped) == {"incomplete": 2}
    assert fresh.exists() and partial.exists() and read_rejects(collector) == []

    with partial.open("a") as fh:
        fh.write(' written", "answer": "done"}\n')
    for path in (fresh, partial):
        os.utime(path, (time.time() - 10, time.time() - 10))
    assert len(collector.collect(DictCursors()).samples) == 3


def test_unconfirmed_processed_file_is_read_again(collector: DistillationCollector) -> None:
    write_inbox(collector, "b.jsonl", [REASONING, "oops"])
    first = collector.collect(DictCursors())  # the daemon stops before storing: cursors are lost
    cursors = DictCursors()
    recovered = cursors.apply(collector.collect(cursors))
    assert [s.id for s in recovered.samples] == [s.id for s in first.samples]
    assert len(read_rejects(collector)) == 1  # rejects are not written twice
    assert collector.collect(cursors).samples == []


def test_paths_limit_the_pass(collector: DistillationCollector) -> None:
    write_inbox(collector, "one.jsonl", [REASONING])
    two = write_inbox(collector, "two.jsonl", [PREFERENCE])
    result = collector.collect(DictCursors(), paths=[two])
    assert [s.kind for s in result.samples] == ["preference"]
    assert (collector.inbox / "one.jsonl").exists()


def test_duplicate_records_in_one_pass_are_counted(collector: DistillationCollector) -> None:
    write_inbox(collector, "dup.jsonl", [REASONING, REASONING])
    result = collector.collect(DictCursors())
    assert len(result.samples) == 1 and result.skipped["duplicate_record"] == 1


def test_ingest_records_for_the_api(collector: DistillationCollector) -> None:
    result, rejects = collector.ingest_records([PREFERENCE, {"kind": "preference"}, CORRECTION])
    assert len(result.samples) == 3
    assert rejects == [{"index": 1, "reason": "preference: field 'prompt' is missing"}]
    assert read_rejects(collector)[0]["file"] == "api"
    again, _ = collector.ingest_records([PREFERENCE, CORRECTION])
    assert [s.id for s in again.samples] == [s.id for s in result.samples]
