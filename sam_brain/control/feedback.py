"""Feedback from use: a rating, a correction or a regeneration choice becomes samples (`feedback`).

A feedback names a completion by the id its client got; the completion is read back from the
conversation log (`deployment.chat_log`, scrubbed), so feedback needs `deployment.log_conversations`.
What each kind teaches, through `pipeline.ingest.store_result` like any collector's samples:

- `up`: the prompt and the answer as an SFT sample;
- `down`: nothing is taught; a thumbs-up given before is taken back, the rating is counted and
  travels as `meta["rejected_rating"] = "down"` on any pair where this answer is the rejected one;
- `correction` (`text`): the corrected answer as an SFT sample, and a pair (correction chosen,
  original rejected);
- `choice` (`over`: other completion ids of the same prompt; default every other logged one):
  one pair per answer passed over (kept chosen).

Ids are stable (completion, kind, other completion) and each kind replaces its own earlier
samples (`replace_keys`: a completion's rating, its correction, a prompt's choice), so sending a
feedback twice changes nothing and the latest one wins. The journal (`feedback.jsonl` beside the
log) keeps the latest feedback per completion and kind, ids and counts only, for the statistics.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deployment.chat_log import ChatLog
from sam_brain.errors import BadRequest, Conflict, NotFound
from sam_brain.home import Home
from sam_brain.pipeline.ingest import store_result
from sam_brain.pipeline.scrub import Scrubber
from sam_brain.protocols import CollectResult, Message, Sample, stable_id

SOURCE = "feedback"
KINDS = ("up", "down", "correction", "choice")
FIELDS = {"completion_id", "kind", "text", "over"}
MAX_OVER = 16
JOURNAL = "feedback.jsonl"
_journal_lock = threading.Lock()


def log_dir(home: Home) -> Path:
    return home.data / "conversations"


def open_chat_log(home: Home, scrubber: Scrubber | None = None) -> ChatLog | None:
    """The conversation log the config asks for (None when `log_conversations` is off).

    Its lines are scrubbed by the pipeline's scrubber, across the prompt and the answer at once
    (a value redacted in one is redacted in the other too), as a sample is.
    """
    dep = home.config.deployment
    if not dep.log_conversations:
        return None
    scrub = scrubber or Scrubber(redact_emails=home.config.pipeline.redact_emails)

    def clean(messages: list[Message], answer: str) -> tuple[list[Message], str]:
        turns = [*messages, {"role": "assistant", "content": answer}]
        sample = Sample(id="log", source=SOURCE, source_key="", group="", messages=turns)
        done, _ = scrub.scrub_sample(sample)
        return done.messages[:-1], str(done.messages[-1].get("content") or "")

    return ChatLog(log_dir(home), clean, dep.log_keep_days)


@dataclass(frozen=True)
class Feedback:
    """One checked feedback request."""

    completion_id: str
    kind: str
    text: str = ""
    over: tuple[str, ...] = ()


def parse_feedback(body: dict[str, Any]) -> Feedback:
    """Check a `POST /v1/feedback` body (unknown fields already refused by the reader).

    Raises:
        BadRequest: naming the field and what it must be.
    """
    cid = body.get("completion_id")
    if not isinstance(cid, str) or not cid.strip() or len(cid) > 200:
        raise BadRequest("'completion_id' must be the id of a chat completion (chatcmpl-...)")
    kind = body.get("kind")
    if kind not in KINDS:
        raise BadRequest(f"'kind' must be one of: {', '.join(KINDS)}")
    text = body.get("text", "")
    if kind == "correction":
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("a correction needs 'text': the corrected answer")
    elif "text" in body:
        raise BadRequest(f"'text' goes only with kind 'correction', not {kind!r}")
    over = body.get("over", [])
    if kind != "choice" and "over" in body:
        raise BadRequest(f"'over' goes only with kind 'choice', not {kind!r}")
    if not isinstance(over, list) or not all(isinstance(o, str) and o for o in over):
        raise BadRequest("'over' must be a list of completion ids")
    if len(over) > MAX_OVER:
        raise BadRequest(f"'over' names at most {MAX_OVER} completions")
    if cid in over:
        raise BadRequest("'over' must not contain the chosen completion itself")
    return Feedback(cid, kind, text, tuple(dict.fromkeys(over)))


@dataclass
class Outcome:
    """What one feedback did."""

    completion_id: str
    kind: str
    samples: int = 0  # SFT samples made
    pairs: int = 0  # preference pairs made
    stored: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "dropped": dict(self.dropped)}


def apply_feedback(home: Home, chat_log: ChatLog | None, fb: Feedback) -> Outcome:
    """Turn one feedback into samples in the pool and record it in the journal.

    Raises:
        Conflict: conversation logging is off (no completion can be looked up).
        NotFound: the completion (or one in `over`) is not in the log.
        BadRequest: the feedback cannot be taught (a correction equal to the answer, nothing
            to choose over, `over` naming another prompt's completion).
    """
    if chat_log is None:
        raise Conflict(
            "feedback needs the conversation log: set deployment.log_conversations = true"
        )
    entry = _lookup(chat_log, fb.completion_id)
    prompt: list[Message] = entry["messages"]
    answer = str(entry.get("answer", ""))
    group = f"{SOURCE}:{entry.get('prompt_key', '')}"
    meta = {"completion_id": fb.completion_id, "served_by": entry.get("version", "")}
    result = CollectResult()
    out = Outcome(fb.completion_id, fb.kind)

    def sample(sid: str, key: str, messages: list[Message], **extra: Any) -> Sample:
        return Sample(
            id=sid,
            source=SOURCE,
            source_key=key,
            group=group,
            messages=messages,
            strategy=SOURCE,
            tier="A",  # a person checked it
            meta={**meta, "feedback": fb.kind, **extra.pop("meta", {})},
            **extra,
        )

    ratings = _latest(home)
    if fb.kind in ("up", "down"):
        key = f"{SOURCE}:{fb.completion_id}:rating"
        result.replace_keys.add(key)
        if fb.kind == "up":
            turn = {"role": "assistant", "content": answer}
            result.samples.append(
                sample(stable_id(SOURCE, fb.completion_id, "up"), key, [*prompt, turn])
            )
    elif fb.kind == "correction":
        if fb.text.strip() == answer.strip():
            raise BadRequest("the correction is the answer itself: nothing to learn")
        key = f"{SOURCE}:{fb.completion_id}:correction"
        result.replace_keys.add(key)
        turn = {"role": "assistant", "content": fb.text}
        result.samples.append(
            sample(stable_id(SOURCE, fb.completion_id, "correction"), key, [*prompt, turn])
        )
        result.samples.append(
            sample(
                stable_id(SOURCE, fb.completion_id, "correction", "pair"),
                key,
                prompt,
                kind="preference",
                chosen=fb.text,
                rejected=answer,
                meta=_rated(ratings, fb.completion_id),
            )
        )
    else:
        key = f"{SOURCE}:choice:{entry.get('prompt_key', '')}"
        result.replace_keys.add(key)
        for other in _passed_over(chat_log, entry, fb):
            if str(other.get("answer", "")).strip() == answer.strip():
                result.skipped["same_answer"] += 1
                continue
            result.samples.append(
                sample(
                    stable_id(SOURCE, "choice", fb.completion_id, other["id"]),
                    key,
                    prompt,
                    kind="preference",
                    chosen=answer,
                    rejected=str(other.get("answer", "")),
                    meta={"rejected_completion": other["id"], **_rated(ratings, other["id"])},
                )
            )
    # Exact duplicates only: every pair and sample here repeats the conversation's prompt,
    # which for a long conversation would make them all "near duplicates" of each other.
    report = store_result(home, SOURCE, result, near_dedup=False)
    out.samples = sum(1 for s in result.samples if s.kind == "sft")
    out.pairs = sum(1 for s in result.samples if s.kind == "preference")
    out.stored, out.dropped = report.stored, report.dropped + report.skipped
    _journal(home, fb, entry)
    return out


def _lookup(chat_log: ChatLog, cid: str) -> dict[str, Any]:
    entry = chat_log.find(cid)
    if entry is None or not isinstance(entry.get("messages"), list):
        raise NotFound(
            f"no logged completion {cid!r} (never served while logging was on,"
            f" or older than deployment.log_keep_days)"
        )
    return entry


def _passed_over(chat_log: ChatLog, entry: dict[str, Any], fb: Feedback) -> list[dict[str, Any]]:
    """The completions the chosen one was preferred to: `over`, or its prompt's other answers."""
    if fb.over:
        others = [_lookup(chat_log, cid) for cid in fb.over]
        for other in others:
            if other.get("prompt_key") != entry.get("prompt_key"):
                raise BadRequest(f"completion {other['id']!r} answered another prompt")
    else:
        seen = {fb.completion_id}
        others = []
        key, served = str(entry.get("prompt_key", "")), float(entry.get("time") or 0.0)
        for other in chat_log.same_prompt(key, served):
            if other["id"] not in seen:
                seen.add(other["id"])
                others.append(other)
    if not others:
        raise BadRequest(
            f"no other completion of this prompt is logged: nothing {fb.completion_id!r} was chosen over"
        )
    return others


def _rated(ratings: dict[tuple[str, str], dict[str, Any]], cid: str) -> dict[str, Any]:
    """The negative signal of a thumbs-down on the rejected answer, as pair metadata."""
    rating = ratings.get((cid, "rating"))
    return {"rejected_rating": "down"} if rating and rating["kind"] == "down" else {}


# --- the journal: latest feedback per completion and kind (ids and counts only) ---


def _slot(kind: str) -> str:
    return "rating" if kind in ("up", "down") else kind


def _journal_path(home: Home) -> Path:
    return log_dir(home) / JOURNAL


def _latest(home: Home) -> dict[tuple[str, str], dict[str, Any]]:
    """(completion id, slot) -> its latest journal record; a choice is keyed by its prompt."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        lines = _journal_path(home).read_bytes().splitlines()
    except FileNotFoundError:
        return latest
    for raw in lines:
        try:
            rec = json.loads(raw)
        except ValueError:
            continue  # a torn last line
        if isinstance(rec, dict) and rec.get("kind") in KINDS:
            latest[(str(rec.get("key")), _slot(rec["kind"]))] = rec
    return latest


def _journal(home: Home, fb: Feedback, entry: dict[str, Any]) -> None:
    key = str(entry.get("prompt_key")) if fb.kind == "choice" else fb.completion_id
    rec = {
        "key": key,
        "completion_id": fb.completion_id,
        "kind": fb.kind,
        "over": list(fb.over),
        "text_sha": stable_id(fb.text) if fb.text else "",
    }
    with _journal_lock:
        old = _latest(home).get((key, _slot(fb.kind)))
        if old is not None and {k: old.get(k) for k in rec} == rec:
            return  # the same feedback again: nothing new to record
        path = _journal_path(home)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = (json.dumps({**rec, "time": round(time.time(), 3)}) + "\n").encode()
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)


def feedback_stats(home: Home) -> dict[str, Any]:
    """Counts of the latest feedback per completion (and per prompt, for choices)."""
    kinds = Counter(rec["kind"] for rec in _latest(home).values())
    directory = log_dir(home)
    logged = 0
    if directory.is_dir():
        logged = sum(1 for p in directory.glob("*-*-*.jsonl") for _ in p.open("rb"))
    return {
        "logging": home.config.deployment.log_conversations,
        "logged_completions": logged,
        "pool_samples": home.pool.stats()["by_source"].get(SOURCE, 0),
        "thumbs_up": kinds["up"],
        "thumbs_down": kinds["down"],
        "corrections": kinds["correction"],
        "choices": kinds["choice"],
    }
