"""`samctl data show --render` and `samctl data export` on a real pool of ingested sessions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sam_brain.control.cli import main
from sam_brain.pool import Pool
from sam_brain.protocols import Sample


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def home(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from sam_brain.dev.examples import write_example_sessions

    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(h))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    # The configured base model is the tiny Qwen2 model (real Qwen2.5 template, local files).
    (h / "config.toml").write_text(
        f'[api]\nport = 9\n[training]\nbackend = "mlx"\nmlx_base_model = "{tiny_model}"\n'
    )
    src = tmp_path / "projects"
    write_example_sessions(src, n_sessions=4, seed=1)
    assert main(["ingest", "sessions", str(src), "--now", "--json"]) == 0
    return h


def samples(home: Path) -> list[tuple[Sample, str]]:
    return list(Pool(home / "pool").samples())


def with_calls(home: Path) -> Sample:
    return next(
        s
        for s, _ in samples(home)
        if s.kind == "sft" and any(m.get("tool_calls") for m in s.messages)
    )


def marked_calls(body: str) -> int:
    """Tool calls inside the marked (supervised) spans; every span must end its turn."""
    marked = [part.split("◀")[0] for part in body.split("▶")[1:]]
    assert all(p.endswith("<|im_end|>") for p in marked)
    return sum(p.count('<tool_call>\n{"name": "') for p in marked)


def test_show_render_marks_the_supervised_spans(
    home: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoTokenizer

    from sam_brain.masking import encode_chat
    from sam_brain.render import render

    capsys.readouterr()
    sample = with_calls(home)
    code, out, err = run(capsys, "data", "show", sample.id, "--render")
    assert code == 0, err
    head, body = out.split("\n", 1)
    assert head.startswith(f"# {sample.id}: rendered with the tokenizer of {tiny_model}")
    assert "\x1b[" not in out  # not a terminal: arrows, not ANSI
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    text = render(tok, sample.messages)
    assert body.replace("▶", "").replace("◀", "") == text  # the exact training text
    assistants = sum(m["role"] == "assistant" for m in sample.messages)
    assert body.count("▶") == body.count("◀") == assistants
    ids, mask = encode_chat(tok, sample.messages, 10**9)
    assert f"{sum(mask)} of {len(ids)} tokens supervised" in head
    calls = sum(len(m.get("tool_calls") or []) for m in sample.messages)
    assert marked_calls(body) == calls
    assert "# Tools" in body and '"arguments": "' not in body

    code, out, _ = run(capsys, "data", "show", sample.id, "--render", "--color", "always")
    assert out.count("\x1b[1;32m") == assistants
    code, out, _ = run(capsys, "data", "show", sample.id, "--render", "--template", "smollm2")
    assert code == 0 and "rendered with the template smollm2" in out
    assert out.split("\n")[1:3] == ["<|im_start|>system", "# Tools"]  # the Hermes fallback
    assert "<|im_start|>tool" not in out and "<tool_response>" in out
    assert marked_calls(out) == calls
    # Without --render: the sample and its provenance as JSON, as before.
    code, out, _ = run(capsys, "data", "show", sample.id)
    assert json.loads(out)["id"] == sample.id


def test_show_render_falls_back_to_qwen_and_rejects_bad_model(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (home / "config.toml").write_text(
        '[api]\nport = 9\n[training]\nbackend = "mlx"\nmlx_base_model = "/nonexistent/model"\n'
    )
    capsys.readouterr()
    sample = with_calls(home)
    code, out, err = run(capsys, "data", "show", sample.id, "--render")
    assert code == 0 and "not available offline" in err
    assert "rendered with the template qwen2.5" in out and "# Tools" in out
    code, _, err = run(capsys, "data", "show", sample.id, "--render", "--model", "/nope")
    assert code == 3 and err.startswith("samctl: cannot load a tokenizer from '/nope'")
    assert len(err.strip().splitlines()) == 1


def test_export_feeds_datasets_and_real_templates(
    home: Path, tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets
    from transformers import AutoTokenizer

    from sam_brain.render import render

    pool = {s.id: (s, split) for s, split in samples(home) if s.kind == "sft"}
    out = tmp_path / "export.jsonl"
    code, text, _ = run(capsys, "data", "export", "--out", str(out), "--metadata")
    assert code == 0 and f"wrote {len(pool)} samples" in text
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(pool)
    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    n_calls = 0
    for row in rows:
        meta = row["metadata"]
        sample, split = pool[meta["id"]]
        assert meta["split"] == split and meta["tier"] == sample.tier
        assert meta["source"] == "sessions" and meta["session"] == sample.meta["session_id"]
        assert meta["cli_version"] == sample.meta["version"] and "model" in meta
        calls = [c for m in row["messages"] for c in m.get("tool_calls") or ()]
        n_calls += len(calls)
        assert all(isinstance(c["function"]["arguments"], dict) for c in calls)
        assert {t["function"]["name"] for t in row["tools"]} == {
            c["function"]["name"] for c in calls
        }
    assert n_calls > 0

    # Loads with datasets and renders through a real template exactly as training renders it.
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == len(rows)
    for i, row in enumerate(ds):
        loaded: dict[str, Any] = row
        sample, _ = pool[loaded["metadata"]["id"]]
        rendered = tok.apply_chat_template(
            loaded["messages"], tools=loaded["tools"] or None, tokenize=False
        )
        assert rendered == render(tok, sample.messages), i

    code, _, _ = run(capsys, "data", "export", "--out", str(out), "--arguments", "string")
    plain = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("metadata" not in r for r in plain)
    strings = [c["function"]["arguments"] for r in plain for m in r["messages"]
               for c in m.get("tool_calls") or ()]  # fmt: skip
    assert len(strings) == n_calls and all(isinstance(s, str) for s in strings)
    assert all(isinstance(json.loads(s), dict) for s in strings)
