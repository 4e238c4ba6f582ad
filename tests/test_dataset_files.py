"""Dataset files (OpenAI chat JSONL, ShareGPT, Alpaca): reading, format detection, row checks.

Real files in temp dirs; the reader runs with a 7-byte chunk too, so rows, multi-byte characters
and JSON array items cross chunk boundaries as they do in a multi-GB file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import collectors.dataset_read as dataset_read
from collectors.dataset import BATCH, MalformedRows, batches, check_file
from collectors.dataset_formats import RowProblem, convert
from collectors.dataset_read import RowReader
from sam_brain.errors import BadRequest, NotFound

OPENAI_TOOLS = {
    "messages": [
        {"role": "system", "content": "You run shell commands."},
        {"role": "user", "content": "Which files are here?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "ls", "arguments": '{"path": "."}'},
                },
                {"type": "function", "function": {"name": "pwd", "arguments": {}}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "notes.txt\nmain.py"},
        {"role": "assistant", "content": "Two files: notes.txt and main.py.", "weight": 1},
    ],
    "tools": [{"type": "function", "function": {"name": "ls", "parameters": {}}}],
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_openai_row_with_tool_calls() -> None:
    messages, tools = convert("openai", OPENAI_TOOLS)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "assistant"]
    calls = messages[2]["tool_calls"]
    assert calls[0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "ls", "arguments": '{"path": "."}'},
    }
    # A call without an id gets one; object arguments become JSON text, as curated samples have.
    assert calls[1]["id"] == "call_3_2" and calls[1]["function"]["arguments"] == "{}"
    assert messages[2]["content"] == "" and messages[3]["tool_call_id"] == "call_a"
    assert messages[4]["weight"] == 1
    assert tools == OPENAI_TOOLS["tools"]


def test_openai_text_parts_are_joined() -> None:
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
            {"role": "assistant", "content": "Hello, how can I help?"},
        ]
    }  # fmt: skip
    assert convert("openai", row)[0][0]["content"] == "Hi there"


def test_sharegpt_with_system_prompt_and_tool_turns() -> None:
    row = {
        "system": "You are terse.",
        "conversations": [
            {"from": "human", "value": "Weather in Oslo?"},
            {
                "from": "function_call",
                "value": '{"name": "weather", "arguments": {"city": "Oslo"}}',
            },
            {"from": "observation", "value": "rain, 7C"},
            {"from": "gpt", "value": "Rainy and 7 degrees."},
            {"from": "human", "value": "Thanks"},
            {"from": "gpt", "value": "You're welcome."},
        ],
        "tools": '[{"name": "weather"}]',
    }
    messages, tools = convert("sharegpt", row)
    assert messages[0] == {"role": "system", "content": "You are terse."}
    assert [m["role"] for m in messages[1:]] == ["user", "assistant", "tool", "assistant", "user", "assistant"]  # fmt: skip
    call = messages[2]["tool_calls"][0]
    assert call["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}
    assert messages[3]["tool_call_id"] == call["id"]
    assert tools == [{"name": "weather"}]
    # A system turn inside the conversation is the system prompt too.
    row2 = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}  # fmt: skip
    assert convert("sharegpt", row2)[0][0] == {"role": "system", "content": "S"}


def test_alpaca_with_and_without_input() -> None:
    with_input = {"instruction": "Translate to French.", "input": "cat", "output": "chat"}
    assert convert("alpaca", with_input)[0] == [
        {"role": "user", "content": "Translate to French.\n\ncat"},
        {"role": "assistant", "content": "chat"},
    ]
    no_input = {"instruction": "Name a prime.", "input": "", "output": "Seven is prime."}
    assert convert("alpaca", no_input)[0][0] == {"role": "user", "content": "Name a prime."}
    history = {**no_input, "system": "Be exact.", "history": [["Hi", "Hello."]]}
    roles = [m["role"] for m in convert("alpaca", history)[0]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize(
    ("fmt", "row", "code", "words"),
    [
        ("openai", {"messages": [{"role": "bot", "content": "x"}]}, "unknown_role", "message 1: unknown role 'bot'"),
        ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "  "}]}, "empty_content", "message 2 (assistant): empty content"),
        ("openai", {"messages": [{"role": "user", "content": "Q"}]}, "no_assistant_turn", "no assistant turn"),
        ("openai", {"messages": "hi"}, "wrong_type", "'messages' must be a list, got text"),
        ("openai", {"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "A"}]}, "wrong_type", "content must be text, got a number"),
        ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "not json"}}]}]}, "bad_tool_call", "arguments are not a JSON object"),
        ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "tool", "tool_call_id": "x", "content": "r"}, {"role": "assistant", "content": "A"}]}, "bad_tool_result", "answers no earlier tool call"),
        ("openai", {"messages": [{"role": "assistant", "content": "A"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}, "does_not_start_with_user", "not a user turn"),
        ("openai", {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "Q2"}]}, "does_not_end_with_assistant", "last turn is not an assistant"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "robot", "value": "A"}]}, "unknown_role", "turn 2: unknown speaker 'robot'"),
        ("sharegpt", {"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}, "user_user", "two user turns in a row"),
        ("sharegpt", {"messages": []}, "missing_field", "no 'conversations' list (the row looks like openai)"),
        ("alpaca", {"instruction": "Do it", "output": ""}, "empty_content", "'output' is empty"),
        ("alpaca", {"instruction": ["x"], "output": "y"}, "wrong_type", "'instruction' must be text, got a list"),
        ("alpaca", "just text", "not_object", "a row must be a JSON object, got text"),
    ],
)  # fmt: skip
def test_malformed_rows_are_named(
    tmp_path: Path, fmt: str, row: Any, code: str, words: str
) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    check = check_file(path, fmt)
    assert check.bad == {code: 1}, check.problems
    assert check.problems == [f"line 1: {check.problems[0][len('line 1: ') :]}"]
    assert words in check.problems[0]


def test_check_names_line_numbers_and_counts_after_twenty(tmp_path: Path) -> None:
    good = {"instruction": "Say hi.", "output": "Hi there, friend."}
    lines = [json.dumps(good), "", json.dumps({"instruction": "x"}), "{not json"]
    lines += [json.dumps({"instruction": "", "output": "y"})] * 23
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    check = check_file(path)
    assert check.format == "alpaca" and check.detected
    assert check.rows == 26 and check.bad_rows == 25  # the blank line 2 is no row
    assert check.problems[0] == "line 3: no 'output' field"
    assert check.problems[1].startswith("line 4: bad JSON: ")
    assert check.problems[2] == "line 5: 'instruction' is empty"
    err = MalformedRows(check)
    text = str(err)
    assert "25 of 26 rows are malformed" in text and "nothing was imported" in text
    assert len(err.problems) == 20 and text.endswith("... and 5 more")
    assert isinstance(err, BadRequest) and err.exit_code == 2


def test_streamed_reading_matches_a_whole_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        {"conversations": [{"from": "human", "value": f"Qüestion {i} ☃"}, {"from": "gpt", "value": f"Ånswer {i} 42"}]}
        for i in range(30)
    ]  # fmt: skip
    array = tmp_path / "s.json"
    array.write_text("\ufeff[\n" + ",\n".join(json.dumps(r, ensure_ascii=False, indent=1) for r in rows) + "\n]\n", "utf-8")  # fmt: skip
    jsonl = write_jsonl(tmp_path / "s.jsonl", rows)
    whole = {p: [r.value for r in RowReader(p).rows()] for p in (array, jsonl)}
    monkeypatch.setattr(dataset_read, "CHUNK", 7)  # rows and UTF-8 sequences cross chunks
    for path in (array, jsonl):
        reader = RowReader(path)
        got = list(reader.rows())
        assert [r.value for r in got] == whole[path] == rows
        assert reader.digest == __import__("hashlib").sha256(path.read_bytes()).hexdigest()
    items = list(RowReader(array).rows())
    assert [r.line for r in items[:2]] == [2, 2 + json.dumps(rows[0], indent=1).count("\n") + 1]
    check = check_file(array)
    assert (check.format, check.container, check.rows, check.bad_rows) == ("sharegpt", "array", 30, 0)  # fmt: skip


def test_batches_split_a_file_and_ids_are_stable(tmp_path: Path) -> None:
    rows = [{"instruction": f"Q{i}", "output": f"Answer number {i}"} for i in range(7)]
    path = write_jsonl(tmp_path / "a.jsonl", rows)
    check = check_file(path)
    parts = list(batches(check, training="support", size=3))
    assert [len(p.samples) for p in parts] == [3, 3, 1] and BATCH > 3
    first = parts[0].samples[0]
    assert first.source == "dataset" and first.group.endswith(":1")
    assert first.meta == {
        "file": str(path),
        "row": 1,
        "format": "alpaca",
        "file_sha256": check.digest,
        "training": "support",
    }
    again = next(batches(check_file(path), size=3)).samples[0]
    assert again.id == first.id and "training" not in again.meta
    (tmp_path / "b.jsonl").write_text(path.read_text() + "\n")  # another content, other ids
    other = next(batches(check_file(tmp_path / "b.jsonl"))).samples[0]
    assert other.id != first.id


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "is empty"),
        (b"\n \n", "is empty"),
        (b"[]", "holds no rows"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', "is not UTF-8 text (byte 46)"),
        (b'[{"instruction": "a", "output": "b"},\n {"instruction": "c" "output"}]', "bad JSON in item 2 (line 2)"),
        (b'[{"instruction": "a", "output": "b"}', "the JSON array is not closed"),
        (b'[{"instruction": "a", "output": "b"}] x', "text after the closing"),
        (b'{"text": "hello"}\n{"prompt": "q", "completion": "a"}\n', "cannot tell the format"),
    ],
    ids=["empty", "blank", "empty-array", "latin1", "broken-array", "unclosed", "trailing", "unknown"],
)  # fmt: skip
def test_bad_files_give_one_line_errors(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(BadRequest) as err:
        check_file(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"nope\.jsonl does not exist"):
        check_file(tmp_path / "nope.jsonl")
    with pytest.raises(NotFound, match="is not a file"):
        check_file(tmp_path)
    with pytest.raises(BadRequest, match="unknown dataset format 'csv'"):
        check_file(tmp_path / "nope.jsonl", "csv")


def test_row_problem_carries_its_code() -> None:
    with pytest.raises(RowProblem) as err:
        convert("alpaca", {"output": "x"})
    assert err.value.code == "missing_field" and str(err.value) == "no 'instruction' field"


def test_a_large_file_is_streamed_not_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    path = tmp_path / "big.jsonl"
    row = {"instruction": "Q" * 40, "input": "", "output": "A" * 150}
    with path.open("w", encoding="utf-8") as f:
        for i in range(20_000):
            f.write(json.dumps({**row, "instruction": f"{i} {row['instruction']}"}) + "\n")
    size = path.stat().st_size
    monkeypatch.setattr(dataset_read, "CHUNK", 64 << 10)
    tracemalloc.start()
    try:
        check = check_file(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert check.rows == 20_000 and check.bad_rows == 0
    assert size > 4_000_000 and peak < size / 8, (size, peak)  # a few chunks, not the file
