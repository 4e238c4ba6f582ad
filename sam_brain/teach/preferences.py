"""The `preferences` job: the active adapter's own answers, ranked by the teacher, as DPO pairs.

As clitron does after SFT (reference seed 002): for held-out prompts the active version (the base
model when none is active) writes `k` candidate answers through the resident model, sampling at
`temperature`; the teacher scores the candidates of one prompt in one request, and the best and
the worst become a preference pair (`kind="preference"`, source `teacher`) that the DPO stage of
the next run trains on (`preference.jsonl`, see `sam_brain.train.dataset`). A prompt whose best and
worst scores tie, whose candidates are all the same text, or whose scores cannot be read gives
no pair and is counted (`tie`, `identical_candidates`, `unparseable_reply`).

Held-out prompts: train-split SFT samples the active adapter did not train on (its run's
`samples.json`); the train split, so the pairs can train without touching the gate's held-out
rows. Candidates are written to `<data>/teach/<job>/candidates.json` as they are made, so a rerun
reuses them (a replayed teacher verdict always meets the candidates it judged) and pays nothing
twice; the runner's progress file replays the answered requests.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sam_brain.fsutil import write_text_atomic
from sam_brain.home import Home
from sam_brain.protocols import Message, Sample, TeacherReply, TeacherRequest
from sam_brain.teach.augment import SOURCE, count_once, final_answer
from sam_brain.teach.jobs import Handler, JobContext, Outcome, sample_id
from sam_brain.teach.progress import jobs_dir
from sam_brain.train.dataset import SAMPLES

DEFAULT_K = 4
DEFAULT_PROMPTS = 32
DEFAULT_TEMPERATURE = 0.8
DEFAULT_MAX_TOKENS = 256
ANSWER_CHARS = 3_000  # each candidate shown to the teacher is cut to this
_SCORE = re.compile(r"answer\s*(\d+)\s*[:=\-]\s*(\d+(?:\.\d+)?)", re.I)

RANK_SYSTEM = (
    "You grade answers of a coding assistant. You get a user's request and several candidate "
    "answers. Score each from 1 (useless or wrong) to 10 (correct, complete, helpful). Reply "
    "with one line per answer, `Answer N: SCORE`, and nothing else."
)


class PreferencesJob:
    """`samctl teach preferences`: see the module docstring."""

    kind = "preferences"

    def run(self, ctx: JobContext) -> None:
        run_preferences(ctx)


def trained_ids(home: Home) -> set[str]:
    """Ids of the samples the active version trained on (empty: no active version or no list)."""
    active = home.versions.current()
    if active is None or not active.run_id:
        return set()
    try:
        doc = json.loads((home.runs_dir / active.run_id / "data" / SAMPLES).read_text("utf-8"))
    except (OSError, ValueError):
        return set()
    return set(doc) if isinstance(doc, dict) else set()


def held_out_prompts(
    home: Home, limit: int, training: str = ""
) -> list[tuple[Sample, list[Message]]]:
    """Up to `limit` (sample, prompt) of train-split SFT samples the active adapter never saw."""
    seen = trained_ids(home)
    out: list[tuple[Sample, list[Message]]] = []
    for sample, _ in sorted(home.pool.samples(kind="sft", split="train"), key=lambda r: r[0].id):
        if sample.id in seen or (training and sample.meta.get("training", training) != training):
            continue
        cut = final_answer(sample)
        if cut is None or not cut[0]:
            continue
        out.append((sample, cut[0]))
        if len(out) >= limit:
            break
    return out


def candidates_path(home: Home, job_id: str) -> Path:
    """Beside the job's progress file (`<data>/teach/<job>/`)."""
    return jobs_dir(home.data) / job_id / "candidates.json"


def make_candidates(
    ctx: JobContext, prompts: list[tuple[Sample, list[Message]]], k: int, temperature: float
) -> dict[str, list[str]]:
    """`k` sampled answers per prompt from the active adapter, saved after each prompt."""
    path = candidates_path(ctx.home, ctx.job_id)
    try:
        done: dict[str, list[str]] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        done = {}
    todo = [(s, p) for s, p in prompts if s.id not in done]
    if not todo:
        return done
    active = ctx.home.versions.current()
    adapter = active.adapter_path if active is not None else None
    max_tokens = int(ctx.spec.options.get("max_tokens", DEFAULT_MAX_TOKENS))
    ctx.log(
        f"preferences: {len(todo)} prompts x {k} candidates from {active.version if active else 'the base model'}"
    )

    run = _exclusive(ctx)
    for sample, prompt in todo:
        ctx.check_cancelled()

        # One prompt per turn on the shared model, so chat requests are served in between.
        def work(model: Any, prompt: list[Message] = prompt) -> list[str]:
            model.use(adapter)
            return [
                str(model.generate(prompt, max_tokens, temperature=temperature).text)
                for _ in range(k)
            ]

        done[sample.id] = run(work)
        write_text_atomic(path, json.dumps(done))
    return done


def _exclusive(ctx: JobContext) -> Callable[[Callable[[Any], Any]], Any]:
    """The daemon's shared resident model, or one of our own (CLI)."""
    if ctx.exclusive is not None:
        runner: Callable[[Callable[[Any], Any]], Any] = ctx.exclusive
        return runner
    from sam_brain.errors import BackendUnavailable
    from sam_brain.hub import resolve_model
    from sam_brain.train.release import configured_base_ref, gate_exclusive

    local = gate_exclusive(str(resolve_model(configured_base_ref(ctx.home))))
    if local is None:
        raise BackendUnavailable("preferences needs a model: install mlx-lm, or torch + peft")
    return local


def _rank_text(request: str, candidates: list[str]) -> str:
    parts = [f"## Request\n{request[:ANSWER_CHARS]}"]
    parts += [f"## Answer {i}\n{c[:ANSWER_CHARS]}" for i, c in enumerate(candidates, 1)]
    parts.append(f"Score answers 1 to {len(candidates)}: one line each, `Answer N: SCORE`.")
    return "\n\n".join(parts)


# One worked example before the real question: small local teachers (a 135M model included)
# then answer in the format instead of echoing the question.
DEMO: list[Message] = [
    {
        "role": "user",
        "content": _rank_text(
            "How do I undo my last git commit but keep the changes?",
            ["Run `git reset --soft HEAD~1`.", "Bananas are yellow.", "Delete the .git folder."],
        ),
    },
    {"role": "assistant", "content": "Answer 1: 9\nAnswer 2: 1\nAnswer 3: 2"},
]


def rank_request(key: str, prompt: list[Message], candidates: list[str]) -> TeacherRequest:
    request = next(
        (str(m.get("content") or "") for m in reversed(prompt) if m.get("role") == "user"), ""
    )
    return TeacherRequest(
        messages=[*DEMO, {"role": "user", "content": _rank_text(request, candidates)}],
        system=RANK_SYSTEM,
        max_tokens=16 * len(candidates),
        key=key,
    )


def parse_scores(text: str, n: int) -> list[float] | None:
    """The score of each of `n` answers (the first score given for each), or None when any is
    missing or out of 1..10."""
    scores: dict[int, float] = {}
    for number, score in _SCORE.findall(text):
        scores.setdefault(int(number), float(score))
    if set(range(1, n + 1)) - set(scores) or not all(1 <= scores[i] <= 10 for i in range(1, n + 1)):
        return None
    return [scores[i] for i in range(1, n + 1)]


def run_preferences(ctx: JobContext) -> None:
    opts = ctx.spec.options
    k = int(opts.get("k", DEFAULT_K))
    temperature = float(opts.get("temperature", DEFAULT_TEMPERATURE))
    prompts = held_out_prompts(ctx.home, ctx.spec.count or DEFAULT_PROMPTS, ctx.spec.training)
    if not prompts:
        ctx.log("preferences: no held-out prompts in the pool")
        count_once(ctx, Counter(no_prompts=1))
        ctx.ask_all([], _handler(ctx, {}))  # records the count
        return
    cands = make_candidates(ctx, prompts, k, temperature)
    requests: list[TeacherRequest] = []
    by_key: dict[str, tuple[Sample, list[Message], list[str]]] = {}
    skipped: Counter[str] = Counter()
    for sample, prompt in prompts:
        answers = cands.get(sample.id, [])
        distinct = list(dict.fromkeys(a.strip() for a in answers if a.strip()))
        if len(distinct) < 2:
            skipped["identical_candidates"] += 1
            continue
        key = f"p-{sample.id}"
        by_key[key] = (sample, prompt, distinct)
        requests.append(rank_request(key, prompt, distinct))
    count_once(ctx, skipped)
    ctx.set_total(len(requests))
    ctx.ask_all(requests, _handler(ctx, by_key))  # also when empty: it records the counts


def _handler(
    ctx: JobContext, by_key: dict[str, tuple[Sample, list[Message], list[str]]]
) -> Handler:
    active = ctx.home.versions.current()

    def handle(request: TeacherRequest, reply: TeacherReply) -> Outcome:
        out = Outcome()
        orig, prompt, answers = by_key[request.key]
        scores = parse_scores(reply.text, len(answers))
        if scores is None:
            out.counts["unparseable_reply"] += 1
            return out
        best = max(range(len(scores)), key=lambda i: scores[i])
        worst = min(range(len(scores)), key=lambda i: scores[i])
        if scores[best] == scores[worst]:
            out.counts["tie"] += 1
            return out
        meta: dict[str, Any] = {
            "job": ctx.job_id,
            "teacher_model": reply.model,
            "original_id": orig.id,
            "adapter_version": active.version if active else "base",
            "scores": scores,
            "made": "preference",
        }
        if ctx.spec.training:
            meta["training"] = ctx.spec.training
        out.samples.append(
            Sample(
                id=sample_id(ctx.job_id, request.key),
                source=SOURCE,
                source_key=f"teacher:{ctx.job_id}",
                group=orig.group,
                messages=prompt,
                kind="preference",
                strategy=orig.strategy,
                tier=orig.tier,
                chosen=answers[best],
                rejected=answers[worst],
                meta=meta,
            )
        )
        out.counts["preference_pairs"] += 1
        return out

    return handle
