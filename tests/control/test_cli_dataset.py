"""`samctl ingest dataset`: real files of each format into a real pool, all or nothing.

Exact counts in the pool, idempotent re-imports, malformed rows named by line with nothing
imported, `--skip-bad` counts, dedup across formats, scrubbing, and long rows trimmed or
dropped like every other source's.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

import collectors.dataset as dataset_mod
from sam_brain.config_load import load_config
from sam_brain.control.cli import main
from sam_brain.control.dataset_import import import_dataset, training_names
from sam_brain.home import Home
from sam_brain.pool import Pool
from sam_brain.protocols import Sample

SECRETS = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "secrets"

OPENAI: list[dict[str, Any]] = [
    {
        "messages": [
            {"role": "system", "content": "You are a shell helper."},
            {"role": "user", "content": "Which files are in this folder?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "list_dir", "arguments": '{"path": "."}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "README.md\nsetup.py"},
            {"role": "assistant", "content": "There are two files: README.md and setup.py."},
        ],
        "tools": [{"type": "function", "function": {"name": "list_dir", "parameters": {}}}],
    },
    {
        "messages": [
            {"role": "user", "content": "What does `git stash` do?"},
            {"role": "assistant", "content": "It shelves your uncommitted changes for later."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Convert 3 km to metres."},
            {"role": "assistant", "content": "3 km is 3000 metres."},
            {"role": "user", "content": "And to centimetres?"},
            {"role": "assistant", "content": "That is 300000 centimetres."},
        ]
    },
]
SHAREGPT = [
    {
        "system": "Answer like a pirate.",
        "conversations": [
            {"from": "human", "value": "Where is the treasure buried?"},
            {"from": "gpt", "value": "Arr, under the old palm tree on the north beach."},
        ],
    },
    {
        "conversations": [
            {"from": "system", "value": "You are a careful reviewer."},
            {"from": "human", "value": "Is `except: pass` a good idea?"},
            {"from": "gpt", "value": "Rarely: it hides every error, including typos."},
        ]
    },
]
ALPACA = [
    {"instruction": "Translate to German.", "input": "Good morning", "output": "Guten Morgen"},
    {"instruction": "Give the capital of Norway.", "input": "", "output": "The capital is Oslo."},
    {"instruction": "Name a sorting algorithm.", "output": "Merge sort is one example."},
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def imported(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, out = run(capsys, "ingest", "dataset", *args, "--json")
    assert code == 0, out
    doc: dict[str, Any] = json.loads(out)
    return doc


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def pool_samples(home: Path) -> list[tuple[Sample, str]]:
    return list(Pool(home / "pool").samples())


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(h))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    # A small token budget keeps the long-row files small; port 9: no daemon answers.
    (h / "config.toml").write_text("[api]\nport = 9\n\n[pipeline]\nmax_tokens = 200\n")
    return h


def test_three_formats_with_exact_counts_and_idempotent_reimport(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {
        "openai": write_jsonl(tmp_path / "chat.jsonl", OPENAI),
        "sharegpt": tmp_path / "share.json",
        "alpaca": write_jsonl(tmp_path / "alpaca.jsonl", ALPACA),
    }
    files["sharegpt"].write_text(json.dumps(SHAREGPT, indent=2), "utf-8")
    sizes = {"openai": 3, "sharegpt": 2, "alpaca": 3}
    code, out = run(capsys, "ingest", "dataset", str(files["openai"]))
    assert code == 0 and out.startswith("format: openai (detected from its first rows)\n"), out
    for fmt in ("sharegpt", "alpaca"):
        doc = imported(capsys, str(files[fmt]))
        assert (doc["format"], doc["format_detected"], doc["rows"]) == (fmt, True, sizes[fmt])
        assert doc["inserted"] == sizes[fmt] and doc["dropped"] == {} and doc["bad_rows"] == 0
    stats = json.loads(run(capsys, "data", "stats", "--json")[1])
    assert stats["total"] == 8 and stats["by_source"] == {"dataset": 8}
    for fmt, path in files.items():  # same files again: nothing new, nothing duplicated
        doc = imported(capsys, str(path), "--format", fmt)
        assert (doc["inserted"], doc["updated"], doc["format_detected"]) == (0, sizes[fmt], False)
    assert json.loads(run(capsys, "data", "stats", "--json")[1])["total"] == 8

    by_row = {(s.meta["format"], s.meta["row"]): (s, split) for s, split in pool_samples(home)}
    tool_row, _ = by_row[("openai", 1)]
    assert [m["role"] for m in tool_row.messages] == ["system", "user", "assistant", "tool", "assistant"]  # fmt: skip
    assert tool_row.messages[2]["tool_calls"][0]["function"]["name"] == "list_dir"
    assert tool_row.meta["tools"] == OPENAI[0]["tools"] and "training" not in tool_row.meta
    assert tool_row.meta["file"] == str(files["openai"].resolve())
    pirate, _ = by_row[("sharegpt", 1)]
    assert pirate.messages[0] == {"role": "system", "content": "Answer like a pirate."}
    reviewer, _ = by_row[("sharegpt", 2)]
    assert reviewer.messages[0] == {"role": "system", "content": "You are a careful reviewer."}
    assert by_row[("alpaca", 1)][0].messages[0]["content"] == "Translate to German.\n\nGood morning"
    assert by_row[("alpaca", 2)][0].messages[0]["content"] == "Give the capital of Norway."
    assert by_row[("alpaca", 3)][0].messages[0]["content"] == "Name a sorting algorithm."
    # One conversation, one group: the multi-turn row is one sample in one split.
    groups = [s.group for s, _ in by_row.values()]
    assert len(set(groups)) == 8 and all(s.source == "dataset" for s, _ in by_row.values())


def test_malformed_rows_are_named_and_nothing_is_imported(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = [json.dumps(r) for r in OPENAI]
    bad_role = {"messages": [{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Yo"}]}
    lines = [
        good[0],
        good[1],
        '{"messages": [',  # line 3: bad JSON
        "",
        json.dumps(bad_role),  # line 5
        json.dumps({"messages": [{"role": "user", "content": "Only a question?"}]}),  # line 6
        good[2],
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    code, out = run(capsys, "ingest", "dataset", str(path))
    assert code == 2, out
    assert "3 of 6 rows are malformed (openai); nothing was imported" in out
    assert "  line 3: bad JSON: " in out
    assert "  line 5: message 2: unknown role 'bot'" in out
    assert "  line 6: the conversation has no assistant turn" in out
    stats = json.loads(run(capsys, "data", "stats", "--json")[1])
    assert stats["total"] == 0

    assert run(capsys, "ingest", "dataset", str(path), "--dry-run")[0] == 2  # what the import says
    doc = imported(capsys, str(path), "--dry-run", "--skip-bad")
    assert (doc["dry_run"], doc["rows"], doc["bad_rows"], doc["bad"]["bad_json"]) == (True, 6, 3, 1)
    assert json.loads(run(capsys, "data", "stats", "--json")[1])["total"] == 0

    doc = imported(capsys, str(path), "--skip-bad")
    assert doc["inserted"] == 3 and doc["bad_rows"] == 3
    assert doc["skipped"] == {
        "malformed:bad_json": 1,
        "malformed:unknown_role": 1,
        "malformed:no_assistant_turn": 1,
    }
    stats = json.loads(run(capsys, "data", "stats", "--json")[1])
    assert stats["by_source"] == {"dataset": 3}
    assert stats["skipped"]["dataset:malformed:unknown_role"] == 1, stats["skipped"]
    rows = sorted(s.meta["row"] for s, _ in pool_samples(home))
    assert rows == [1, 2, 7]  # a row's number is its line


def test_one_line_errors_for_bad_files(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = {
        "missing.jsonl": (None, 3, "does not exist"),
        "empty.jsonl": (b"", 2, "is empty"),
        "latin1.jsonl": (b'{"instruction": "caf\xe9", "output": "x"}\n', 2, "is not UTF-8 text"),
        "plain.jsonl": (b'{"text": "a"}\n', 2, "cannot tell the format"),
    }
    for name, (content, exit_code, words) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        code, out = run(capsys, "ingest", "dataset", str(tmp_path / name))
        assert (code, out.count("\n")) == (exit_code, 1) and words in out, out
    code, out = run(capsys, "ingest", "dataset")
    assert code == 2 and "exactly one file" in out
    code, out = run(capsys, "ingest", "docs", str(tmp_path), "--skip-bad")
    assert code == 1 and "are for datasets" in out


def test_duplicates_across_formats_are_dropped(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    imported(capsys, str(write_jsonl(tmp_path / "a.jsonl", ALPACA)))
    # The same two exchanges as ShareGPT and as OpenAI chat, plus one new one.
    share = [
        {"conversations": [{"from": "human", "value": m[0]["content"]}, {"from": "gpt", "value": m[1]["content"]}]}
        for m in ([{"content": "Give the capital of Norway."}, {"content": "The capital is Oslo."}],)
    ] + [{"conversations": [{"from": "human", "value": "Is tea a drink?"}, {"from": "gpt", "value": "Yes, tea is a drink."}]}]  # fmt: skip
    doc = imported(capsys, str(write_jsonl(tmp_path / "s.jsonl", share)))
    assert (doc["inserted"], doc["dropped"]) == (1, {"duplicate": 1})
    chat = [{"messages": [{"role": "user", "content": "Name a sorting algorithm."}, {"role": "assistant", "content": "Merge sort is one example."}]}]  # fmt: skip
    doc = imported(capsys, str(write_jsonl(tmp_path / "c.jsonl", chat)))
    assert (doc["inserted"], doc["dropped"]) == (0, {"duplicate": 1})
    assert json.loads(run(capsys, "data", "stats", "--json")[1])["total"] == 4


def test_a_secret_in_a_row_never_reaches_the_pool(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = SECRETS / "positives.b64.jsonl"
    if not path.exists():
        pytest.skip(f"{path} absent")
    rows = [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    row = next(r for r in rows if r.get("secrets_b64") and r["kind"].endswith("aws-access-token"))
    text = base64.b64decode(row["text_b64"]).decode("utf-8")
    secret = base64.b64decode(row["secrets_b64"][0]).decode("utf-8")
    data = [{"instruction": "Show me the deploy config.", "output": f"Here it is:\n{text}"}]
    doc = imported(capsys, str(write_jsonl(tmp_path / "leak.jsonl", data)))
    assert doc["inserted"] == 1 and sum(doc["redactions"].values()) >= 1
    [(sample, _)] = pool_samples(home)
    assert secret not in json.dumps(sample.to_dict()) and "[REDACTED:" in sample.messages[-1]["content"]  # fmt: skip


def test_long_rows_are_trimmed_or_dropped_like_other_samples(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    long_answer = "word " * 400  # ~2000 chars: past the 200-token budget on its own
    rows = [
        {"messages": [
            {"role": "user", "content": "First, a short question?"},
            {"role": "assistant", "content": "A short answer to it."},
            {"role": "user", "content": "Now a long one?"},
            {"role": "assistant", "content": long_answer},
        ]},
        {"messages": [{"role": "user", "content": "Tell me everything."}, {"role": "assistant", "content": long_answer}]},
        OPENAI[1],
    ]  # fmt: skip
    doc = imported(capsys, str(write_jsonl(tmp_path / "long.jsonl", rows)))
    assert (doc["inserted"], doc["trimmed"], doc["dropped"]) == (2, 1, {"too_long": 1})
    trimmed = next(s for s, _ in pool_samples(home) if s.meta["row"] == 1)
    assert [m["content"] for m in trimmed.messages] == ["First, a short question?", "A short answer to it."]  # fmt: skip


def test_training_names_and_the_training_tag(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", ALPACA)
    code, out = run(capsys, "ingest", "dataset", str(path), "--training", "support")
    assert code == 3 and "no training 'support' (configured: sam)" in out
    assert json.loads(run(capsys, "data", "stats", "--json")[1])["total"] == 0
    doc = imported(capsys, str(path), "--training", "sam")  # the default: no tag
    assert doc["training"] == "sam" and doc["inserted"] == 3
    assert all("training" not in s.meta for s, _ in pool_samples(home))

    config = load_config(None)
    assert training_names(config) == {"sam"}
    # Until `[trainings.NAME]` lands, a config carrying the attribute stands in for one.
    object.__setattr__(config, "trainings", {"support": object()})
    assert training_names(config) == {"sam", "support"}
    monkeypatch.setattr(
        dataset_mod, "BATCH", 2
    )  # three rows: two batches, each one pool commit and report
    h = Home.open(config)
    try:
        before = len(list(h.reports_dir.glob("ingest-*-dataset-*.json")))
        doc = import_dataset(h, path, training="support")
        assert len(list(h.reports_dir.glob("ingest-*-dataset-*.json"))) == before + 2
    finally:
        h.close()
    assert (doc["training"], doc["collected"], doc["updated"], doc["inserted"]) == ("support", 3, 3, 0)  # fmt: skip
    assert {s.meta.get("training") for s, _ in pool_samples(home)} == {"support"}


def test_an_imported_file_can_be_forgotten(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keep = write_jsonl(tmp_path / "keep.jsonl", OPENAI)
    wrong = write_jsonl(tmp_path / "wrong.jsonl", ALPACA)
    imported(capsys, str(keep))
    imported(capsys, str(wrong))
    code, out = run(
        capsys, "data", "forget", "--source", "dataset", "--match", str(wrong.resolve()), "--yes"
    )
    assert code == 0, out
    assert {s.meta["file"] for s, _ in pool_samples(home)} == {str(keep.resolve())}
    assert len(pool_samples(home)) == 3


def test_the_seed_documents_own_examples_import(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Alpaca and chat rows the original SAM pipeline documents (shared seed 004), as written."""
    seed = SECRETS.parents[1] / "reference" / "seeds" / "004_5d0902cbf4550888.txt"
    if not seed.exists():
        pytest.skip(f"{seed} absent")
    text = seed.read_text("utf-8")
    blocks = {
        head: json.loads(text.split(head, 1)[1].split("```json", 1)[1].split("```", 1)[0])
        for head in ("#### Instruction Format (Alpaca-style)", "#### Chat Format (Qwen)")
    }
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [blocks["#### Instruction Format (Alpaca-style)"]])  # fmt: skip
    chat = write_jsonl(tmp_path / "chat.jsonl", [blocks["#### Chat Format (Qwen)"]])
    doc = imported(capsys, str(alpaca))
    assert (doc["format"], doc["inserted"]) == ("alpaca", 1)
    [(sample, _)] = pool_samples(home)
    assert sample.messages[0]["content"] == "Write a Python function to...\n\nAdditional context"
    # The chat example is the same exchange without the input: a new sample, not a duplicate.
    doc = imported(capsys, str(chat))
    assert (doc["format"], doc["inserted"], doc["dropped"]) == ("openai", 1, {})


def test_samctl_data_export_imports_back(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our own OpenAI-style export (tools, tool calls, arguments as objects or strings) is a
    dataset file another home takes whole: same conversations, same count."""
    from sam_brain.dev.examples import write_example_sessions

    (home / "config.toml").write_text("[api]\nport = 9\n")  # the default budget: sessions fit
    src = tmp_path / "projects"
    write_example_sessions(src, n_sessions=4, seed=3)
    assert run(capsys, "ingest", "sessions", str(src), "--now")[0] == 0
    exported = {}
    for form in ("object", "string"):
        exported[form] = tmp_path / f"export-{form}.jsonl"
        code, out = run(capsys, "data", "export", "--out", str(exported[form]), "--arguments", form)
        assert code == 0, out
    rows = [json.loads(line) for line in exported["string"].read_text().splitlines()]
    assert any(m.get("tool_calls") for r in rows for m in r["messages"]), "no tool calls to test"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.toml").write_text("[api]\nport = 9\n")
    monkeypatch.setenv("SAM_BRAIN_HOME", str(other))
    doc = imported(capsys, str(exported["string"]))
    assert (doc["format"], doc["bad_rows"], doc["inserted"]) == ("openai", 0, len(rows))
    again = imported(capsys, str(exported["object"]))  # the same text: every row a duplicate
    assert (again["inserted"], again["dropped"]) == (0, {"duplicate": len(rows)})
    calls = [
        c["function"]
        for s, _ in pool_samples(other)
        for m in s.messages
        for c in m.get("tool_calls") or ()
    ]
    assert calls and all(isinstance(json.loads(f["arguments"]), dict) for f in calls)
