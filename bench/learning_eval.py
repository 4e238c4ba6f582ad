"""Scoring for the learning benchmark: held-out loss, tool-call loss, next action, JSON validity.

Everything is scored with torch (transformers + peft) on the same token ids and loss masks the
trainers use (`sam_brain.masking.encode_chat`), so the figures mean what training optimised.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
TEXT = "(text)"  # the "action" of an assistant turn that calls no tool


@dataclass
class Scores:
    """One model's figures on the held-out rows."""

    losses: list[float] = field(default_factory=list)  # per row, mean NLL of supervised tokens
    tool_losses: list[float] = field(default_factory=list)  # per row that has tool-call tokens
    tool_rows: list[int] = field(default_factory=list)  # which rows `tool_losses` belong to
    actions: list[tuple[str, str]] = field(default_factory=list)  # (expected, predicted)
    calls: int = 0  # generated turns that open a tool call
    valid_calls: int = 0  # ... whose body is a JSON object with a name and object arguments
    generations: list[str] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(e == p for e, p in self.actions) / len(self.actions) if self.actions else 0.0

    @property
    def tool_accuracy(self) -> float:
        tools = [(e, p) for e, p in self.actions if e != TEXT]
        return sum(e == p for e, p in tools) / len(tools) if tools else 0.0

    @property
    def json_validity(self) -> float:
        return self.valid_calls / self.calls if self.calls else 0.0


def load_model(model_dir: Path, adapter_dir: Path | None) -> tuple[Any, Any]:
    """The base model in fp32 on the CPU, with the adapter applied (merged) when given."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        from backends.adapter_format import peft_files

        with tempfile.TemporaryDirectory() as tmp:
            peft_dir = peft_files(adapter_dir, model_dir, Path(tmp))
            model = PeftModel.from_pretrained(model, str(peft_dir)).merge_and_unload()
    model.eval()
    return model, tokenizer


def _tool_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"<tool_call>.*?</tool_call>", text, re.S)]


def row_losses(
    model: Any, tokenizer: Any, messages: list[dict[str, Any]], max_length: int
) -> tuple[float, float | None]:
    """Mean NLL over the row's supervised tokens, and over its supervised tool-call tokens."""
    import torch

    from sam_brain.masking import encode_chat

    ids, mask = encode_chat(tokenizer, messages, max_length)
    text = tokenizer.decode(ids)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = _tool_spans(text)
    in_tool = [0] * len(ids)
    if enc["input_ids"] == ids:  # offsets are only trusted when the re-encoding is identical
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            in_tool[k] = int(any(s <= a and b <= e for s, e in spans))
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0].float()
    nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
    sup = torch.tensor(mask[1:], dtype=torch.float32)
    tool = sup * torch.tensor(in_tool[1:], dtype=torch.float32)
    mean = float((nll * sup).sum() / sup.sum())
    tool_mean = float((nll * tool).sum() / tool.sum()) if tool.sum() > 0 else None
    return mean, tool_mean


def expected_action(message: dict[str, Any]) -> str:
    calls = message.get("tool_calls") or []
    if not calls:
        return TEXT
    return str((calls[0].get("function") or calls[0]).get("name", ""))


def parse_action(text: str) -> tuple[str, bool | None]:
    """(the tool the generation calls or TEXT, whether its call is valid JSON or None)."""
    m = TOOL_CALL.search(text)
    if m is None:
        return TEXT, None
    try:
        body = json.loads(m.group(1))
    except ValueError:
        name = re.search(r'"name"\s*:\s*"([^"]+)"', m.group(1))
        return (name.group(1) if name else "?"), False
    ok = isinstance(body, dict) and isinstance(body.get("name"), str)
    ok = ok and isinstance(body.get("arguments", {}), dict)
    return (str(body.get("name")) if isinstance(body, dict) else "?"), ok


def context_ids(
    tokenizer: Any, messages: list[dict[str, Any]], turn: int, budget: int
) -> list[int]:
    """Token ids of the sample up to its `turn`-th assistant message, generation prompt added.

    Rendered as training renders the whole sample (same tool definitions, same form), then cut to
    `budget` tokens by keeping the head (system, tools, first prompt) and the newest tokens.
    """
    from sam_brain.render import apply_template, prepare

    prepared = prepare(tokenizer, messages)
    positions = [i for i, m in enumerate(prepared.messages) if m.get("role") == "assistant"]
    first_user = next(i for i, m in enumerate(prepared.messages) if m.get("role") == "user")
    text = apply_template(tokenizer, prepared, positions[turn], add_generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return ids
    head_text = apply_template(tokenizer, prepared, first_user + 1, add_generation_prompt=False)
    head = min(len(tokenizer(head_text, add_special_tokens=False)["input_ids"]), budget // 2)
    return ids[:head] + ids[len(ids) - (budget - head) :]


def next_action(
    model: Any, tokenizer: Any, messages: list[dict[str, Any]], turn: int, budget: int, max_new: int
) -> str:
    """Greedy continuation at the `turn`-th assistant message, special tokens kept."""
    import torch

    ids = torch.tensor([context_ids(tokenizer, messages, turn, budget)])
    stop = [t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if t]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
            do_sample=False, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id or stop[0],
            stop_strings=["</tool_call>"], tokenizer=tokenizer,
        )  # fmt: skip
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=False))


def turn_points(rows: list[list[dict[str, Any]]], limit: int) -> list[tuple[int, int, int]]:
    """(row, message index, assistant ordinal) of supervised assistant turns, evenly spread."""
    points = []
    for r, messages in enumerate(rows):
        ordinal = -1
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            ordinal += 1
            if m.get("weight", 1) != 0 and i > 0:
                points.append((r, i, ordinal))
    if len(points) <= limit:
        return points
    step = len(points) / limit
    return [points[int(k * step)] for k in range(limit)]


def score(
    model: Any,
    tokenizer: Any,
    rows: list[list[dict[str, Any]]],
    points: list[tuple[int, int, int]],
    *,
    max_length: int,
    budget: int,
    max_new: int,
    show: int = 3,
) -> Scores:
    """All figures of one model on the held-out rows."""
    s = Scores()
    for r, messages in enumerate(rows):
        mean, tool = row_losses(model, tokenizer, messages, max_length)
        s.losses.append(mean)
        if tool is not None:
            s.tool_losses.append(tool)
            s.tool_rows.append(r)
    for r, i, turn in points:
        out = next_action(model, tokenizer, rows[r], turn, budget, max_new)
        predicted, valid = parse_action(out)
        s.actions.append((expected_action(rows[r][i]), predicted))
        if valid is not None:
            s.calls += 1
            s.valid_calls += int(valid)
        if len(s.generations) < show:
            s.generations.append(out)
    return s
