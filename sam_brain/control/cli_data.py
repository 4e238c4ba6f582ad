"""`samctl data`: pool statistics, one sample (optionally as the exact training text), the export.

`show ID --render` prints what a training run feeds the model: the sample rendered by
`sam_brain.render` with the base model's chat template, supervised spans marked (ANSI bold green
on a terminal, `▶...◀` otherwise). `export` writes OpenAI-style chat JSONL, one sample a line,
with `tools` (JSON schemas of the tools it calls) and arguments as objects, the form Hugging Face
chat templates and so TRL, Axolotl and mlx-lm take; `--metadata` adds the provenance.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_brain.config import Config
from sam_brain.control.cli_client import open_home, print_doc
from sam_brain.errors import BadRequest, NotFound
from sam_brain.masking import encode_chat, supervised_spans
from sam_brain.protocols import Message, Sample
from sam_brain.render import native_messages
from sam_brain.tool_schemas import tool_definitions

if TYPE_CHECKING:
    from sam_brain.home import Home

TEMPLATES = {
    "qwen2.5": "qwen2_5_instruct.jinja",
    "smollm2": "smollm2_135m_instruct.jinja",
}
ANSI = ("\x1b[1;32m", "\x1b[0m")
ARROWS = ("▶", "◀")
RENDER_HELP = (
    "print the exact training text, supervised spans marked: ANSI bold green on a terminal, "
    "▶...◀ otherwise (see --color)"
)


def data(args: argparse.Namespace, config: Config) -> int:
    from sam_brain.control.feedback import feedback_stats
    from sam_brain.pipeline.coverage import CURSOR_PREFIX, summarize

    home = open_home(config)
    try:
        if args.data_command == "stats":
            stats = home.pool.stats()
            stats["skipped"] = home.store.counters("skipped")
            stats["dropped"] = home.store.counters("dropped")
            stats["coverage"] = summarize(home.store.cursors_with_prefix(CURSOR_PREFIX))
            stats["feedback"] = feedback_stats(home)
            print_doc(stats, args.json)
        elif args.data_command == "show":
            sample, columns = _get(home, args.id)
            if args.render:
                print(show_rendered(sample, config, args), end="")
            else:
                print_doc({**columns, **sample.to_dict()}, True)
        elif args.data_command in ("forget", "compact"):
            from sam_brain.control.cli_forget import compact, forget

            return forget(home, args) if args.data_command == "forget" else compact(home, args)
        else:
            n = export(
                home, args.split, Path(args.out), metadata=args.metadata, args=args.arguments
            )
            print(f"wrote {n} samples to {args.out}")
    finally:
        home.close()
    return 0


def _get(home: Home, sample_id: str) -> tuple[Sample, dict[str, Any]]:
    found = home.pool.get(sample_id)
    if found is None:
        raise NotFound(f"no sample {sample_id!r} in the pool")
    return found


class TemplateRenderer:
    """A chat template without a vocabulary: renders text only, as `apply_chat_template` would."""

    def __init__(self, name: str, template: str) -> None:
        self.name, self.chat_template = name, template

    def apply_chat_template(
        self,
        messages: list[Message],
        tools: list[dict[str, Any]] | None = None,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        schemas: Any = tools
        # Annotated `-> str`, but returns (rendered texts, generation indices).
        result: Any = render_jinja_template(
            [messages],
            tools=schemas,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
        )
        return str(result[0][0])


def named_template(name: str) -> TemplateRenderer:
    """One of the real templates shipped in `sam_brain/dev/data` (see TEMPLATES)."""
    if name not in TEMPLATES:
        raise BadRequest(f"unknown template {name!r}; choose one of {', '.join(TEMPLATES)}")
    text = resources.files("sam_brain.dev").joinpath("data", TEMPLATES[name]).read_text("utf-8")
    return TemplateRenderer(name, text)


def render_tokenizer(config: Config, model: str | None, template: str | None) -> tuple[Any, str]:
    """The tokenizer to render with and a label: --model, --template, the base model, Qwen2.5."""
    if template:
        return named_template(template), f"template {template}"
    candidates = [model] if model else _base_models(config)
    for name in candidates:
        tok = _load_tokenizer(name, required=bool(model))
        if tok is not None:
            return tok, f"tokenizer of {name}"
    print(
        f"samctl: base model {candidates[0]} is not available offline; "
        "rendering with Qwen2.5-Instruct's template",
        file=sys.stderr,
    )
    return named_template("qwen2.5"), "template qwen2.5"


def _base_models(config: Config) -> list[str]:
    t = config.training
    if t.backend == "cuda":
        return [t.cuda_base_model]
    if t.backend == "mlx":
        return [t.mlx_base_model]
    return [t.mlx_base_model, t.cuda_base_model]


def _load_tokenizer(name: str, *, required: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as err:  # not downloaded, not a model folder, or no tokenizer in it
        if required:
            raise NotFound(f"cannot load a tokenizer from {name!r}: {err}") from err
        return None


def show_rendered(sample: Sample, config: Config, args: argparse.Namespace) -> str:
    """The training text of `sample` with its supervised spans marked, and a header line."""
    if sample.kind != "sft":
        raise BadRequest(f"sample {sample.id} is a {sample.kind} pair; only SFT samples render")
    tok, label = render_tokenizer(config, args.model, args.template)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    full, spans = supervised_spans(tok, sample.messages)
    head = f"# {sample.id}: rendered with the {label}; {len(spans)} supervised spans"
    if not isinstance(tok, TemplateRenderer):
        ids, mask = encode_chat(tok, sample.messages, 10**9)
        head += f", {sum(mask)} of {len(ids)} tokens supervised"
    return head + "\n" + mark(full, spans, ANSI if color else ARROWS)


def mark(text: str, spans: list[tuple[int, int]], markers: tuple[str, str]) -> str:
    """`text` with each span wrapped in the open and close markers."""
    out, pos = [], 0
    for start, end in spans:
        out += [text[pos:start], markers[0], text[start:end], markers[1]]
        pos = end
    out.append(text[pos:])
    return "".join(out) + ("" if text.endswith("\n") else "\n")


def export_row(
    sample: Sample, split: str, *, metadata: bool, args: str = "object"
) -> dict[str, Any]:
    """One OpenAI-style chat row: messages, tools, and optionally the provenance."""
    messages = native_messages(sample.messages)
    if args == "string":  # OpenAI's fine-tuning API takes arguments as JSON text
        for m in messages:
            for call in m.get("tool_calls") or ():
                fn = call["function"]
                fn["arguments"] = json.dumps(fn["arguments"], ensure_ascii=False)
    row: dict[str, Any] = {"messages": messages, "tools": tool_definitions(sample.messages)}
    if metadata:
        meta = sample.meta
        row["metadata"] = {
            "id": sample.id,
            "source": sample.source,
            "source_key": sample.source_key,
            "session": meta.get("session_id") or sample.group,
            "model": meta.get("model"),
            "cli_version": meta.get("version"),
            "strategy": sample.strategy,
            "tier": sample.tier,
            "score": sample.score,
            "split": split,
        }
    return row


def export(home: Home, split: str, out: Path, *, metadata: bool, args: str = "object") -> int:
    """Write the SFT samples of one split (or `all`) as chat JSONL; returns the line count."""
    from sam_brain.fsutil import check_output_file, write_jsonl_atomic

    check_output_file(out)
    samples = home.pool.samples(kind="sft", split=None if split == "all" else split)
    rows = (export_row(s, sp, metadata=metadata, args=args) for s, sp in samples)
    try:
        return write_jsonl_atomic(out, rows)
    except OSError as err:  # the folder vanished or the disk is full mid-write
        raise BadRequest(f"cannot write {out}: {err.strerror or err}") from err
