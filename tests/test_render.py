"""Rendering in the model's own format, with the real Qwen2.5 and SmolLM2 chat templates."""

from __future__ import annotations

import copy
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from sam_brain.masking import encode_chat
from sam_brain.render import (
    ChatTemplateError,
    prepare,
    render,
    supports_tools,
    tools_block,
)
from sam_brain.tool_schemas import CLAUDE_CODE_TOOLS, infer_schema, tool_definitions

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
SESSIONS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "claude-sessions"


def call(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI-style call as the collectors store it: arguments as a JSON string."""
    return {
        "id": cid,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


SAMPLE: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a coding agent."},
    {"role": "user", "content": "can you run ls -la and read the config"},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            call("toolu_1", "Bash", {"command": "ls -la", "description": "List files"}),
            call("toolu_2", "Read", {"file_path": "/home/user/app/config.toml"}),
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_1", "content": "config.toml\nmain.py"},
    {"role": "tool", "tool_call_id": "toolu_2", "content": "[train]\nrank = 8"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [call("toolu_3", "mcp__github__get_issue", {"number": 11, "repo": "sam"})],
    },
    {"role": "tool", "tool_call_id": "toolu_3", "content": "issue 11: samples that act"},
    {"role": "assistant", "content": "Two files; rank is 8; issue 11 is open."},
]


@pytest.fixture(scope="module")
def qwen(tiny_model: Path) -> Any:
    """The tiny Qwen2 tokenizer, which ships Qwen2.5-Instruct's real template."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


@pytest.fixture(scope="module")
def smollm(qwen: Any) -> Any:
    """The same vocabulary with SmolLM2-135M-Instruct's real template (ChatML, no tools)."""
    tok = copy.deepcopy(qwen)
    tok.chat_template = (FIXTURES / "smollm2_135m_instruct.jinja").read_text(encoding="utf-8")
    return tok


def test_fixtures_are_the_shipped_templates(qwen: Any) -> None:
    data = resources.files("sam_brain.dev").joinpath("data")
    for name in ("qwen2_5_instruct.jinja", "smollm2_135m_instruct.jinja"):
        fixture = (FIXTURES / name).read_text(encoding="utf-8")
        assert data.joinpath(name).read_text(encoding="utf-8") == fixture
    assert qwen.chat_template == (FIXTURES / "qwen2_5_instruct.jinja").read_text(encoding="utf-8")
    assert "tool_call.arguments | tojson" in qwen.chat_template
    assert "is string" not in qwen.chat_template  # no look-alike branch hiding string arguments


def test_qwen_renders_native_calls_and_the_tools_block(qwen: Any) -> None:
    assert supports_tools(qwen)
    text = render(qwen, SAMPLE)

    assert text.startswith("<|im_start|>system\nYou are a coding agent.\n\n# Tools\n")
    assert (
        '<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -la", '
        '"description": "List files"}}\n</tool_call>'
    ) in text
    assert '{"name": "Read", "arguments": {"file_path": "/home/user/app/config.toml"}}' in text
    assert '"arguments": {"number": 11, "repo": "sam"}' in text
    assert '"arguments": "' not in text  # never a JSON string inside the call
    tools = re.search(r"<tools>\n(.*)\n</tools>", text, re.S)
    assert tools is not None
    listed = [json.loads(line) for line in tools.group(1).splitlines()]
    assert [t["function"]["name"] for t in listed] == ["Bash", "Read", "mcp__github__get_issue"]
    bash = listed[0]["function"]
    assert bash["parameters"]["required"] == ["command"]
    assert bash["description"] == CLAUDE_CODE_TOOLS["Bash"][0]
    mcp = listed[2]["function"]
    assert mcp["description"] == "Tool get_issue of the MCP server github."
    assert mcp["parameters"] == {
        "type": "object",
        "properties": {"number": {"type": "integer"}, "repo": {"type": "string"}},
        "required": ["number", "repo"],
    }
    # The tool results sit in one user turn, as Qwen2.5 expects them.
    assert (
        "<|im_start|>user\n<tool_response>\nconfig.toml\nmain.py\n</tool_response>\n"
        "<tool_response>\n[train]\nrank = 8\n</tool_response><|im_end|>"
    ) in text


def test_qwen_masks_only_the_assistant_turns(qwen: Any) -> None:
    ids, mask = encode_chat(qwen, SAMPLE, 4096)
    text = render(qwen, SAMPLE)
    assert qwen.decode(ids) == text
    runs = _runs(qwen, ids, mask)
    assert runs == [
        'Let me look.\n<tool_call>\n{"name": "Bash", "arguments": {"command": "ls -la", '
        '"description": "List files"}}\n</tool_call>\n<tool_call>\n{"name": "Read", '
        '"arguments": {"file_path": "/home/user/app/config.toml"}}\n</tool_call><|im_end|>',
        '<tool_call>\n{"name": "mcp__github__get_issue", "arguments": {"number": 11, '
        '"repo": "sam"}}\n</tool_call><|im_end|>',
        "Two files; rank is 8; issue 11 is open.<|im_end|>",
    ]


def test_smollm2_takes_the_hermes_fallback(smollm: Any) -> None:
    assert not supports_tools(smollm)
    prepared = prepare(smollm, SAMPLE)
    assert not prepared.native and prepared.tools is None
    text = render(smollm, SAMPLE)

    tools = tool_definitions(SAMPLE)
    system = "You are a coding agent.\n\n" + tools_block(tools)
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n")
    assert "# Tools" in text and "SmolLM" not in text  # our system replaces the default one
    assert (
        "<|im_start|>assistant\nLet me look.\n<tool_call>\n"
        '{"name": "Bash", "arguments": {"command": "ls -la", "description": "List files"}}'
        "\n</tool_call>\n<tool_call>\n"
        '{"name": "Read", "arguments": {"file_path": "/home/user/app/config.toml"}}'
        "\n</tool_call><|im_end|>\n"
    ) in text
    assert (
        "<|im_start|>user\n<tool_response>\nconfig.toml\nmain.py\n</tool_response>\n"
        "<tool_response>\n[train]\nrank = 8\n</tool_response><|im_end|>\n"
    ) in text
    assert "<|im_start|>tool" not in text

    ids, mask = encode_chat(smollm, SAMPLE, 4096)
    runs = _runs(smollm, ids, mask)
    assert len(runs) == 3
    assert runs[0].startswith("Let me look.\n<tool_call>") and runs[0].endswith("<|im_end|>")
    assert runs[1] == (
        '<tool_call>\n{"name": "mcp__github__get_issue", "arguments": {"number": 11, '
        '"repo": "sam"}}\n</tool_call><|im_end|>'
    )
    assert all("# Tools" not in r and "<tool_response>" not in r for r in runs)


def test_samples_without_calls_render_plainly(qwen: Any, smollm: Any) -> None:
    plain = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render(qwen, plain) == qwen.apply_chat_template(plain, tokenize=False)
    assert render(smollm, plain) == smollm.apply_chat_template(plain, tokenize=False)
    assert "# Tools" not in render(qwen, plain)


def test_arguments_that_are_not_an_object_are_refused_by_name(qwen: Any) -> None:
    bad = copy.deepcopy(SAMPLE)
    bad[2]["tool_calls"][0]["function"]["arguments"] = "ls -la"
    with pytest.raises(ChatTemplateError, match=r"messages\[2\].*'Bash'.*not a JSON object"):
        render(qwen, bad)
    assert SAMPLE[2]["tool_calls"][0]["function"]["arguments"].startswith("{")  # not mutated


def test_schemas_cover_every_argument_seen() -> None:
    msgs = [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                call("a", "Read", {"file_path": "/x", "pages": "1-3"}),
                call("b", "Widget", {"n": 1, "tags": ["a"], "opt": {"deep": True}}),
                call("c", "Widget", {"n": 2.5, "tags": []}),
            ],
        }
    ]
    read, widget = (t["function"] for t in tool_definitions(msgs))
    assert read["parameters"]["properties"]["pages"] == {"type": "string"}  # newer key added
    assert read["parameters"]["properties"]["file_path"]["type"] == "string"
    assert "pages" not in CLAUDE_CODE_TOOLS["Read"][1]["properties"]  # table left untouched
    assert widget["parameters"] == {
        "type": "object",
        "properties": {
            "n": {"type": ["integer", "number"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "opt": {
                "type": "object",
                "properties": {"deep": {"type": "boolean"}},
                "required": ["deep"],
            },
        },
        "required": ["n", "tags"],
    }
    assert infer_schema([]) == {"type": "object", "properties": {}, "required": []}


def test_real_sessions_render_every_call_natively(qwen: Any, tmp_path: Path) -> None:
    if not SESSIONS.is_dir():
        pytest.skip("shared fixtures not available")
    from collectors.sessions import SessionCollector

    result = SessionCollector([SESSIONS], archive_dir=None).collect(_NoCursors())
    with_calls = [s for s in result.samples if any(m.get("tool_calls") for m in s.messages)]
    assert with_calls
    names = {n for n, _ in CLAUDE_CODE_TOOLS.items()}
    for sample in with_calls:
        calls = [c for m in sample.messages for c in m.get("tool_calls") or ()]
        text = render(qwen, sample.messages)
        assert text.count('<tool_call>\n{"name": "') == len(calls)
        for c in calls:
            args = json.loads(c["function"]["arguments"])
            head = json.dumps(
                {"name": c["function"]["name"], "arguments": args}, ensure_ascii=False
            )
            assert "<tool_call>\n" + head + "\n</tool_call>" in text
        defs = tool_definitions(sample.messages)
        assert {d["function"]["name"] for d in defs} == {c["function"]["name"] for c in calls}
        assert all(d["function"]["name"] in names or "Tool " in d["function"]["description"]
                   for d in defs)  # fmt: skip
        ids, mask = encode_chat(qwen, sample.messages, 10**6)
        # Context turns a window repeats carry weight 0 and are not supervised.
        supervised = sum(
            m["role"] == "assistant" and m.get("weight", 1) != 0 for m in sample.messages
        )
        assert len(_runs(qwen, ids, mask)) == supervised


def test_one_mlx_step_trains_on_tool_samples(tiny_model: Path) -> None:
    pytest.importorskip("mlx")
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    from backends.mlx_loss import masked_loss

    model, tok = load(str(tiny_model))[:2]
    model.freeze()
    linear_to_lora_layers(model, 4, {"rank": 4, "scale": 2.0, "dropout": 0.0})
    ids, mask = encode_chat(tok, SAMPLE, 4096)
    assert sum(mask) > 0
    batch = mx.array([ids])
    masks = mx.array([mask])
    before: dict[str, Any] = dict(tree_flatten(model.trainable_parameters()))

    def loss_fn(m: Any) -> Any:
        return masked_loss(m, batch, masks)[0]

    step = nn.value_and_grad(model, loss_fn)  # type: ignore[attr-defined]
    opt = optim.Adam(learning_rate=2e-3)
    losses = []
    for _ in range(5):
        loss, grads = step(model)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(loss.item())
    after = dict(tree_flatten(model.trainable_parameters()))
    assert losses[-1] < losses[0]
    assert any(not mx.array_equal(before[k], after[k]).item() for k in before)


@pytest.mark.slow
def test_mlx_backend_trains_on_tool_samples(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("mlx")
    from dataclasses import asdict

    from backends.mlx import MLXBackend
    from sam_brain.config import Profile
    from sam_brain.protocols import TrainSpec

    def row(i: int) -> dict[str, Any]:
        messages = copy.deepcopy(SAMPLE)
        messages[1]["content"] = f"run ls -la in dir{i} and read its config"
        messages[2]["tool_calls"][0] = call(f"t{i}", "Bash", {"command": f"ls -la dir{i}"})
        messages[-1]["content"] = f"dir{i} has two files; rank is {i}."
        return {"messages": messages}

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in range(8)))
    (data / "valid.jsonl").write_text("".join(json.dumps(row(i)) + "\n" for i in (20, 21)))
    profile = Profile(
        lora_rank=4,
        lora_alpha=8.0,
        num_layers=-1,
        batch_size=2,
        grad_accum=1,
        max_seq_length=2048,  # room for the tools block and every turn: nothing truncated
        learning_rate=1e-3,
        max_steps=4,
        eval_every=2,
        save_every=2,
    )
    spec = TrainSpec(
        run_id="tools",
        base_model=str(tiny_model),
        data_dir=str(data),
        out_dir=str(tmp_path / "out"),
        profile=asdict(profile),
        seed=0,
    )
    from transformers import AutoTokenizer

    from sam_brain.masking import encode_rows

    rows = [row(i)["messages"] for i in range(8)]
    _, stats = encode_rows(AutoTokenizer.from_pretrained(str(tiny_model)), rows, 2048)
    assert stats.kept == 8 and stats.truncated == 0 and stats.fully_masked == 0
    result = MLXBackend().train(spec, lambda p: None, lambda: False)
    assert result.steps == 4
    assert result.metrics["best_val_loss"] < result.metrics["initial_val_loss"]
    assert (Path(result.adapter_dir) / "adapters.safetensors").is_file()


class _NoCursors:
    def get_cursor(self, key: str) -> str | None:
        return None


def _runs(tok: Any, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded maximal runs of supervised tokens."""
    runs: list[list[int]] = []
    prev = 0
    for t, m in zip(ids, mask, strict=True):
        if m and not prev:
            runs.append([])
        if m:
            runs[-1].append(t)
        prev = m
    return [tok.decode(r) for r in runs]
