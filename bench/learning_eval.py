"""Scoring for the learning benchmark: held-out loss, tool-call loss, next action, JSON validity.

Scored on the same token ids and loss masks the trainers use (`sam_brain.masking.encode_chat`),
so the figures mean what training optimised. Two scorers, one per runtime: `MlxScorer` (the
product's own resident model, adapters swapped in place; the default on MLX hosts, about twice
torch's speed on this CPU) and `TorchScorer` (transformers + peft, the adapter converted and
merged: an independent check that the trained adapter means the same thing in both runtimes).
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)
TEXT = "(text)"  # the "action" of an assistant turn that calls no tool
STOP = "</tool_call>"


class Scorer(Protocol):
    """One model (base or base + adapter) as the benchmark needs it."""

    tokenizer: Any  # a Hugging Face tokenizer

    def token_nll(self, ids: list[int]) -> list[float]:
        """NLL of ids[1:] given the ids before each."""
        ...

    def continue_ids(self, ids: list[int], max_new: int) -> str:
        """Greedy continuation of `ids`, special tokens kept, stopped at end-of-turn or STOP."""
        ...


class MlxScorer:
    """The product's resident model (deployment.resident) with `adapter` applied."""

    def __init__(self, memo: MemoResident, adapter: Path | None) -> None:
        memo.use(str(adapter) if adapter else None)
        self.memo = memo
        self.resident = memo.resident
        self.tokenizer = getattr(self.resident.tokenizer, "_tokenizer", self.resident.tokenizer)

    def token_nll(self, ids: list[int]) -> list[float]:
        import mlx.core as mx
        import mlx.nn as nn
        import numpy as np

        logits = self.resident.model(mx.array(ids[:-1])[None])[0].astype(mx.float32)
        ce = nn.losses.cross_entropy(logits, mx.array(ids[1:]))
        nll = [float(x) for x in np.asarray(ce)]
        self.memo.memo[(self.resident.applied, tuple(ids))] = nll
        return nll

    def continue_ids(self, ids: list[int], max_new: int) -> str:
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        text = ""
        for out in stream_generate(
            self.resident.model, self.resident.tokenizer, ids, max_tokens=max_new,
            sampler=make_sampler(temp=0.0),
        ):  # fmt: skip
            text += out.text
            if STOP in text:
                break
        return text


class TorchScorer:
    """The base model in fp32 on the CPU, with the adapter converted to peft and merged."""

    def __init__(self, model_dir: Path, adapter: Path | None) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        if adapter is not None:
            from peft import PeftModel

            from backends.adapter_format import peft_files

            with tempfile.TemporaryDirectory() as tmp:
                peft_dir = peft_files(adapter, model_dir, Path(tmp))
                model = PeftModel.from_pretrained(model, str(peft_dir)).merge_and_unload()
        self.model = model.eval()

    def token_nll(self, ids: list[int]) -> list[float]:
        import torch

        with torch.no_grad():
            logits = self.model(torch.tensor([ids[:-1]])).logits[0].float()
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="none")
        return [float(x) for x in nll]

    def continue_ids(self, ids: list[int], max_new: int) -> str:
        import torch

        tok = self.tokenizer
        prompt = torch.tensor([ids])
        stop = [t for t in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if t]
        with torch.no_grad():
            out = self.model.generate(
                input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new,
                do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id or stop[0],
                stop_strings=[STOP], tokenizer=tok,
            )  # fmt: skip
        return str(tok.decode(out[0, len(ids) :], skip_special_tokens=False))


class MemoResident:
    """The resident model for the product gate, answering its loss pass from the per-token NLL
    the benchmark already computed for the same ids and adapter (the same computation: it saves
    scoring every held-out row twice); anything not seen is computed by the real model."""

    def __init__(self, resident: Any) -> None:
        self.resident = resident
        self.tokenizer = resident.tokenizer
        self.memo: dict[tuple[str | None, tuple[int, ...]], list[float]] = {}
        self.hits = 0

    def use(self, adapter_dir: str | None) -> float:
        return float(self.resident.use(adapter_dir))

    def generate(self, messages: list[dict[str, Any]], max_tokens: int) -> Any:
        return self.resident.generate(messages, max_tokens)

    def sample_nll(self, ids: list[int], mask: list[int]) -> tuple[float, int]:
        nll = self.memo.get((self.resident.applied, tuple(ids)))
        if nll is None:
            return self.resident.sample_nll(ids, mask)  # type: ignore[no-any-return]
        self.hits += 1
        return sum(x * m for x, m in zip(nll, mask[1:], strict=True)), sum(mask[1:])


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
    def tool_accuracy(self) -> float:
        """Next-action accuracy as the issue defines it: on turns where the transcript calls a
        tool, does the greedy output call the same one?"""
        tools = [(e, p) for e, p in self.actions if e != TEXT]
        return sum(e == p for e, p in tools) / len(tools) if tools else 0.0

    @property
    def text_accuracy(self) -> float:
        """On turns where the transcript answers in text, does the model answer in text too?"""
        texts = [(e, p) for e, p in self.actions if e == TEXT]
        return sum(e == p for e, p in texts) / len(texts) if texts else 0.0

    @property
    def json_validity(self) -> float:
        return self.valid_calls / self.calls if self.calls else 0.0


def _tool_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"<tool_call>.*?</tool_call>", text, re.S)]


def row_losses(
    scorer: Scorer, messages: list[dict[str, Any]], max_length: int
) -> tuple[float, float | None]:
    """Mean NLL over the row's supervised tokens, and over its supervised tool-call tokens."""
    from sam_brain.masking import encode_chat

    tokenizer = scorer.tokenizer
    ids, mask = encode_chat(tokenizer, messages, max_length)
    text = tokenizer.decode(ids)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = _tool_spans(text)
    in_tool = [0] * len(ids)
    if enc["input_ids"] == ids:  # offsets are only trusted when the re-encoding is identical
        for k, (a, b) in enumerate(enc["offset_mapping"]):
            in_tool[k] = int(any(s <= a and b <= e for s, e in spans))
    nll = scorer.token_nll(ids)
    sup = mask[1:]
    tool = [m * t for m, t in zip(sup, in_tool[1:], strict=True)]
    mean = sum(x * m for x, m in zip(nll, sup, strict=True)) / sum(sup)
    tool_mean = (
        sum(x * t for x, t in zip(nll, tool, strict=True)) / sum(tool) if any(tool) else None
    )
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


def turn_points(
    rows: list[list[dict[str, Any]]], tool_turns: int, text_turns: int
) -> list[tuple[int, int, int]]:
    """(row, message index, assistant ordinal) of supervised assistant turns, evenly spread:
    up to `tool_turns` that call a tool in the transcript and `text_turns` that answer in text."""
    points: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}
    for r, messages in enumerate(rows):
        ordinal = -1
        for i, m in enumerate(messages):
            if m.get("role") != "assistant":
                continue
            ordinal += 1
            if m.get("weight", 1) != 0 and i > 0:
                points[expected_action(m) != TEXT].append((r, i, ordinal))
    chosen = []
    for found, limit in ((points[True], tool_turns), (points[False], text_turns)):
        step = max(len(found) / limit, 1.0) if limit else 0.0
        chosen += [found[int(k * step)] for k in range(min(limit, len(found)))]
    return sorted(chosen)


def score(
    scorer: Scorer,
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
        mean, tool = row_losses(scorer, messages, max_length)
        s.losses.append(mean)
        if tool is not None:
            s.tool_losses.append(tool)
            s.tool_rows.append(r)
    for r, i, turn in points:
        ids = context_ids(scorer.tokenizer, rows[r], turn, budget)
        out = scorer.continue_ids(ids, max_new)
        predicted, valid = parse_action(out)
        s.actions.append((expected_action(rows[r][i]), predicted))
        if valid is not None:
            s.calls += 1
            s.valid_calls += int(valid)
        if len(s.generations) < show:
            s.generations.append(out)
    return s
