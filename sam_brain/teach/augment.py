"""The `augment` job: better answers for weak samples, and question-answer pairs grounded in docs.

Two stages, as HALops's augmentation does (reference seed 000):

1. Tier-B samples. For every tier-B SFT sample of the train split whose last turn is a text
   answer, the teacher sees the conversation and that answer and writes a better final answer.
   Each reply becomes a preference pair (the teacher's answer chosen, the original rejected) and,
   when the reply clears the quality bar (`below_bar`: complete, long enough, not a refusal,
   not the original again), an SFT sample too. Only the train split is augmented: improving a
   held-out answer would buy nothing the gate can use.
2. Docs. For every Markdown file (READMEs, `SKILL.md`) under `sources.docs_paths` (or the job's
   `source` folder) the teacher writes `per_doc` question-answer pairs as JSON, each with a
   verbatim quote. A pair is kept only when it is grounded (`grounded`): its answer repeats a run
   of at least `QUOTE_WORDS` words of the doc, or names the doc and carries a quote found in it.
   Ungrounded pairs are dropped and counted (`ungrounded`).

New samples keep the original's group (so a session never straddles the splits a dataset build
uses) and carry provenance in `meta`: the job, the teacher model, the original sample or doc.
The runner stores them through the pipeline (validate, scrub, dedup, split) and keeps the
progress file, so a rerun replays answered requests instead of paying for them twice.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sam_brain.fsutil import write_text_atomic
from sam_brain.home import Home
from sam_brain.protocols import Message, Sample, TeacherReply, TeacherRequest
from sam_brain.teach.jobs import Handler, JobContext, Outcome, json_array, sample_id
from sam_brain.teach.progress import jobs_dir

SOURCE = "teacher"
DEFAULT_PER_DOC = 10
QUOTE_WORDS = 6  # a shared run this long is a quote, not a coincidence of common words
MIN_ANSWER_CHARS = 40  # the quality bar's length floor for an SFT sample
DOC_CHARS = 16_000  # longer docs are cut for the request (and grounding is checked on the cut)
TURN_CHARS = 3_000  # each earlier turn shown to the teacher is cut to this
MAX_DOC_BYTES = 2_000_000  # larger Markdown is generated output, not documentation
SKIP_DIRS = {".git", "node_modules", ".venv", "venv", "__pycache__", "site-packages", "build"}
TRUNCATED = ("length", "max_tokens")  # stop reasons of a cut-off reply (OpenAI, Anthropic)
_REFUSAL = re.compile(r"^\s*(?:i(?:'m| am) sorry|i can(?:no|')t|as an ai\b|sorry, i)", re.I)
_WORD = re.compile(r"[a-z0-9_]+")

ANSWER_SYSTEM = (
    "You improve training data for a coding assistant. You see a conversation between a user and "
    "the assistant (tool calls and results included) and the assistant's final answer. Write a "
    "better final answer: correct, complete, concise, honest about what was and was not done, "
    "claiming no action the conversation does not show. Reply with the answer text only."
)
DOC_SYSTEM = (
    "You write question-answer pairs that teach a coding assistant what a document says. Every "
    "answer must be grounded in the document: quote it word for word (at least one sentence, in "
    "quotation marks) and name the document. Reply with a JSON array only, each item "
    '{"question": "...", "answer": "...", "quote": "<a verbatim excerpt of the document>"}.'
)


def count_once(ctx: JobContext, skipped: Counter[str]) -> None:
    """Count what the job skipped before asking, once per job: a rerun (a resume) finds the
    same skips and must not add them to the job's totals again."""
    marker = jobs_dir(ctx.home.data) / ctx.job_id / "skipped.json"
    if marker.exists():
        return
    for reason, n in skipped.items():
        ctx.count(reason, n)
    write_text_atomic(marker, json.dumps(skipped))


def run_augment(ctx: JobContext) -> None:
    """Both stages; the tier-B stage first (it is what the preference pairs come from)."""
    opts = ctx.spec.options
    skipped: Counter[str] = Counter()
    weak = [] if opts.get("docs_only") else tier_b_requests(ctx, skipped)
    docs = [] if opts.get("samples_only") else doc_requests(ctx, skipped)
    count_once(ctx, skipped)
    ctx.set_total(len(weak) + len(docs))
    ctx.log(f"augment: {len(weak)} tier-B answers to improve, {len(docs)} docs to write pairs for")
    # Asked even when empty: the runner records the counts when `ask_all` ends.
    ctx.ask_all([r for r, _ in weak], _answer_handler(ctx, dict((r.key, s) for r, s in weak)))
    ctx.ask_all([r for r, _ in docs], _doc_handler(ctx, dict((r.key, d) for r, d in docs)))


class AugmentJob:
    """`samctl teach augment`: see the module docstring."""

    kind = "augment"

    def run(self, ctx: JobContext) -> None:
        run_augment(ctx)


# -- stage 1: tier-B samples ------------------------------------------------------------------


def final_answer(sample: Sample) -> tuple[list[Message], str] | None:
    """The conversation before the last assistant turn and that turn's text (None: a tool call)."""
    last = sample.messages[-1] if sample.messages else {}
    text = str(last.get("content") or "").strip()
    if last.get("role") != "assistant" or last.get("tool_calls") or not text:
        return None
    return sample.messages[:-1], text


def render_conversation(messages: list[Message]) -> str:
    """The conversation as plain text (any provider takes it; tool turns keep their calls)."""
    lines = []
    for m in messages:
        text = str(m.get("content") or "")[:TURN_CHARS]
        calls = [json.dumps(c.get("function", c))[:TURN_CHARS] for c in m.get("tool_calls") or []]
        body = "\n".join([text, *(f"(tool call) {c}" for c in calls)]).strip()
        lines.append(f"[{m.get('role')}]\n{body}")
    return "\n\n".join(lines)


def tier_b_requests(ctx: JobContext, skipped: Counter[str]) -> list[tuple[TeacherRequest, Sample]]:
    """One request per tier-B train sample with a text answer, in id order (`count` caps them);
    samples that end on a tool call are counted in `skipped`."""
    out: list[tuple[TeacherRequest, Sample]] = []
    rows = sorted(ctx.home.pool.samples(kind="sft", split="train"), key=lambda r: r[0].id)
    for sample, _ in rows:
        if sample.tier != "B" or sample.source == SOURCE:
            continue
        if (
            ctx.spec.training
            and sample.meta.get("training", ctx.spec.training) != ctx.spec.training
        ):
            continue
        cut = final_answer(sample)
        if cut is None:
            skipped["final_turn_is_tool_call"] += 1
            continue
        prompt, original = cut
        user = (
            f"## Conversation\n{render_conversation(prompt)}\n\n"
            f"## The assistant's final answer\n{original[:TURN_CHARS]}\n\n"
            "Write a better final answer."
        )
        request = TeacherRequest(
            messages=[{"role": "user", "content": user}], system=ANSWER_SYSTEM, key=f"b-{sample.id}"
        )
        out.append((request, sample))
        if ctx.spec.count and len(out) >= ctx.spec.count:
            break
    return out


def below_bar(reply: TeacherReply, original: str) -> str | None:
    """Why a teacher answer is not good enough to train on as SFT (None: it is).

    The bar: the reply ended by itself (not cut at the token limit), has at least
    `MIN_ANSWER_CHARS` characters, does not open with a refusal, and is not the original again.
    """
    text = reply.text.strip()
    if reply.stop_reason in TRUNCATED:
        return "below_bar_truncated"
    if len(text) < MIN_ANSWER_CHARS:
        return "below_bar_short"
    if _REFUSAL.match(text):
        return "below_bar_refusal"
    if text == original.strip():
        return "below_bar_unchanged"
    return None


def _meta(ctx: JobContext, reply: TeacherReply, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"job": ctx.job_id, "teacher_model": reply.model, **extra}
    if ctx.spec.training:
        meta["training"] = ctx.spec.training
    return meta


def _answer_handler(ctx: JobContext, originals: dict[str, Sample]) -> Handler:
    def handle(request: TeacherRequest, reply: TeacherReply) -> Outcome:
        out = Outcome()
        orig = originals[request.key]
        prompt, original = final_answer(orig) or ([], "")  # only such samples were asked about
        answer = reply.text.strip()
        if not answer:
            out.counts["empty_reply"] += 1
            return out
        if answer == original:
            out.counts["same_as_original"] += 1
            return out
        meta = _meta(ctx, reply, original_id=orig.id, original_source=orig.source)
        common: dict[str, Any] = {"source": SOURCE, "source_key": f"teacher:{ctx.job_id}"}
        out.samples.append(
            Sample(
                id=sample_id(ctx.job_id, request.key, 0),
                group=orig.group,
                messages=prompt,
                kind="preference",
                strategy=orig.strategy,
                tier=orig.tier,
                chosen=answer,
                rejected=original,
                meta={**meta, "made": "preference"},
                **common,
            )
        )
        out.counts["preference_pairs"] += 1
        reason = below_bar(reply, original)
        if reason:
            out.counts[reason] += 1
            return out
        out.samples.append(
            Sample(
                id=sample_id(ctx.job_id, request.key, 1),
                group=orig.group,
                messages=[*prompt, {"role": "assistant", "content": answer}],
                strategy=orig.strategy,
                tier="A",
                score=max(orig.score, 0.7),
                meta={**meta, "made": "sft"},
                **common,
            )
        )
        out.counts["sft_samples"] += 1
        return out

    return handle


# -- stage 2: docs ----------------------------------------------------------------------------


def doc_files(home: Home, source: str = "") -> Iterator[Path]:
    """Markdown files under the job's `source` folder, else under `sources.docs_paths`, sorted."""
    roots = [Path(source)] if source else [Path(p) for p in home.config.sources.docs_paths]
    for root in roots:
        root = root.expanduser()
        if root.is_file():
            yield root
            continue
        for path in sorted(root.rglob("*.md")):
            parts = path.relative_to(root).parts
            if SKIP_DIRS.isdisjoint(parts) and path.stat().st_size <= MAX_DOC_BYTES:
                yield path


def doc_requests(ctx: JobContext, skipped: Counter[str]) -> list[tuple[TeacherRequest, Path]]:
    """One request per doc; its key holds the content hash, so an edited doc is asked again."""
    per_doc = int(ctx.spec.options.get("per_doc", DEFAULT_PER_DOC))
    out = []
    for path in doc_files(ctx.home, ctx.spec.source):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            skipped["doc_unreadable"] += 1
            continue
        if not text.strip():
            skipped["doc_empty"] += 1
            continue
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        user = (
            f"Document `{path.name}`:\n\n{text[:DOC_CHARS]}\n\n"
            f"Write {per_doc} question-answer pairs about this document."
        )
        request = TeacherRequest(
            messages=[{"role": "user", "content": user}],
            system=DOC_SYSTEM,
            key=f"doc-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]}-{digest}",
        )
        out.append((request, path))
    return out


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _contains_run(haystack: list[str], needle: list[str], run: int) -> bool:
    """Whether some `run` consecutive words of `needle` occur consecutively in `haystack`."""
    if len(needle) < run:
        return False
    grams = {tuple(haystack[i : i + run]) for i in range(len(haystack) - run + 1)}
    return any(tuple(needle[i : i + run]) in grams for i in range(len(needle) - run + 1))


def grounded(answer: str, quote: str, doc: str, doc_name: str) -> bool:
    """The answer quotes the doc (a `QUOTE_WORDS`-word run of it), or cites it: names the doc
    and comes with a quote whose words all occur, in order, in the doc."""
    doc_words = _words(doc)
    if _contains_run(doc_words, _words(answer), QUOTE_WORDS):
        return True
    quote_words = _words(quote)
    if doc_name.lower() not in answer.lower() or len(quote_words) < QUOTE_WORDS:
        return False
    return _contains_run(doc_words, quote_words, len(quote_words))


def _doc_handler(ctx: JobContext, paths: dict[str, Path]) -> Handler:
    per_doc = int(ctx.spec.options.get("per_doc", DEFAULT_PER_DOC))

    def handle(request: TeacherRequest, reply: TeacherReply) -> Outcome:
        out = Outcome()
        path = paths[request.key]
        text = path.read_text(encoding="utf-8", errors="replace")[:DOC_CHARS]
        items = json_array(reply.text)
        if items is None:
            out.counts["unparseable_reply"] += 1
            return out
        for i, item in enumerate(items[:per_doc]):
            fields = [item.get(k) for k in ("question", "answer")] if isinstance(item, dict) else []
            if len(fields) != 2 or not all(isinstance(f, str) and f.strip() for f in fields):
                out.counts["malformed_pair"] += 1
                continue
            question, answer = (str(f).strip() for f in fields)
            quote = str(item.get("quote") or "")
            if not grounded(answer, quote, text, path.name):
                out.counts["ungrounded"] += 1
                continue
            out.samples.append(
                Sample(
                    id=sample_id(ctx.job_id, request.key, i),
                    source=SOURCE,
                    source_key=f"teacher:{ctx.job_id}",
                    group=f"teacher:doc:{path.resolve()}",
                    messages=[
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ],
                    strategy="C",
                    tier="A",
                    score=0.8,
                    meta=_meta(ctx, reply, doc=str(path), quote=quote[:500], made="doc_qa"),
                )
            )
            out.counts["doc_pairs"] += 1
        return out

    return handle
