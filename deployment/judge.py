"""A teacher as judge: pairwise comparison of two models' answers, in both orders.

The judge sees a user's request and two answers and says which helps more, or that they tie. Each
pair is asked twice with the answers swapped, so a judge that favours a position cancels out: the
candidate scores 1 for a win, 0.5 for a tie (or an unreadable reply) in each order, and wins the
pair above 1 point, loses below, ties at exactly 1 (one win per order is a tie: a position-biased
judge). Over the pairs: the win rate (wins over decided pairs, and with ties as halves) and the
two-sided exact binomial (sign) test of wins against losses.

Used by the evaluation gate (optional, `deployment.gate_judge`), where its verdict is reported
beside the loss-based decision with their agreement; and against the hand-labelled alignment set
shipped in `deployment/data/judge_alignment.jsonl` (see `alignment`). The `Teacher` is passed in:
deployment never imports `teachers/`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from deployment.evaluate import EvalReport
from sam_brain.errors import BudgetExhausted, SamBrainError, TeacherError
from sam_brain.masking import load_rows
from sam_brain.protocols import Message, Teacher, TeacherRequest

ALIGNMENT_SET = Path(__file__).parent / "data" / "judge_alignment.jsonl"
JUDGE_SYSTEM = (
    "You judge answers of a coding assistant. You get a user's request and two answers, "
    "Answer 1 and Answer 2. Pick the answer that helps the user more: correct, on topic, "
    "complete and honest about what was done. Reply with one word only: 1, 2 or TIE."
)
MAX_FAILURES_IN_A_ROW = 3
ANSWER_CHARS = 4000  # a longer answer is cut for the judge (the judge's context is finite)
_VERDICT = re.compile(r"\b(tie|answer\s*[12]|[12])\b", re.I)


def judge_prompt(prompt: Sequence[Message], first: str, second: str) -> str:
    """The user turn sent to the judge: the request (its last user turn) and both answers."""
    request = next(
        (str(m.get("content") or "") for m in reversed(prompt) if m.get("role") == "user"), ""
    )
    return (
        f"## Request\n{request[:ANSWER_CHARS]}\n\n## Answer 1\n{first[:ANSWER_CHARS]}\n\n"
        f"## Answer 2\n{second[:ANSWER_CHARS]}\n\nWhich answer is better? Reply 1, 2 or TIE."
    )


def parse_verdict(text: str) -> str:
    """ "1", "2", "tie" from the judge's reply (its first verdict word), else "invalid"."""
    match = _VERDICT.search(text)
    if match is None:
        return "invalid"
    word = match.group(1).lower()
    return "tie" if word == "tie" else word[-1]


def ask(teacher: Teacher, prompt: Sequence[Message], first: str, second: str, key: str) -> str:
    """One judgement of (first, second): "1", "2", "tie" or "invalid"."""
    reply = teacher.ask(
        TeacherRequest(
            messages=[{"role": "user", "content": judge_prompt(prompt, first, second)}],
            system=JUDGE_SYSTEM,
            max_tokens=8,
            temperature=0.0,
            key=key,
        )
    )
    return parse_verdict(reply.text)


@dataclass
class PairVerdict:
    """Both orders of one comparison; `outcome` is "candidate", "incumbent" or "tie"."""

    key: str
    candidate_first: str  # the verdict with the candidate as Answer 1
    incumbent_first: str  # the verdict with the incumbent as Answer 1
    outcome: str


def _points(verdict: str, candidate_is: str) -> float:
    if verdict == candidate_is:
        return 1.0
    if verdict in ("1", "2"):
        return 0.0
    return 0.5  # a tie, or a reply no verdict could be read from


def judge_pair(
    teacher: Teacher, prompt: Sequence[Message], candidate: str, incumbent: str, key: str
) -> PairVerdict:
    """Compare in both orders and combine (see the module docstring)."""
    a = ask(teacher, prompt, candidate, incumbent, f"{key}:c1")
    b = ask(teacher, prompt, incumbent, candidate, f"{key}:c2")
    score = _points(a, "1") + _points(b, "2")
    outcome = "candidate" if score > 1 else "incumbent" if score < 1 else "tie"
    return PairVerdict(key, a, b, outcome)


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided binomial test of k successes in n trials against p = 1/2 (doubled tail)."""
    if n == 0:
        return 1.0
    tail = min(k, n - k)
    # Python ints divide exactly, so large n cannot overflow 2**n.
    total: int = sum(math.comb(n, i) for i in range(tail + 1))
    p: float = 2 * total / 2**n
    return min(1.0, p)


@dataclass
class JudgeReport:
    """What the judge found over a set of prompts."""

    pairs: int
    wins: int
    losses: int
    ties: int
    invalid: int  # single-order replies no verdict could be read from (counted as ties)
    position_flips: int  # pairs where each order preferred the answer in the same position
    win_rate: float  # wins / (wins + losses); 0.5 when every pair tied
    win_rate_ties_half: float  # (wins + ties / 2) / pairs
    p_value: float  # two-sided exact binomial test of wins vs. losses
    verdict: str  # "candidate", "incumbent" or "tie" (more wins, more losses, equal)
    gate_promote: bool | None = None
    agrees_with_gate: bool | None = None
    verdicts: list[PairVerdict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarise(verdicts: Sequence[PairVerdict], gate_promote: bool | None = None) -> JudgeReport:
    """Counts, win rates and the binomial test; agreement when the gate's decision is given.

    The judge agrees with a promotion when it prefers the candidate, and with a rejection when
    it does not (a tie does not argue for the candidate).
    """
    wins = sum(v.outcome == "candidate" for v in verdicts)
    losses = sum(v.outcome == "incumbent" for v in verdicts)
    ties = len(verdicts) - wins - losses
    invalid = sum(
        (v.candidate_first == "invalid") + (v.incumbent_first == "invalid") for v in verdicts
    )
    flips = sum(
        v.candidate_first == v.incumbent_first and v.candidate_first in ("1", "2") for v in verdicts
    )
    decided = wins + losses
    verdict = "candidate" if wins > losses else "incumbent" if losses > wins else "tie"
    agrees = None if gate_promote is None else gate_promote == (verdict == "candidate")
    return JudgeReport(
        pairs=len(verdicts),
        wins=wins,
        losses=losses,
        ties=ties,
        invalid=invalid,
        position_flips=flips,
        win_rate=wins / decided if decided else 0.5,
        win_rate_ties_half=(wins + ties / 2) / len(verdicts) if verdicts else 0.5,
        p_value=binomial_two_sided(wins, decided),
        verdict=verdict,
        gate_promote=gate_promote,
        agrees_with_gate=agrees,
        verdicts=list(verdicts),
    )


class AnsweringModel(Protocol):
    """What the judge needs of a model: the gate's resident model (adapters swapped in place)."""

    def use(self, adapter_dir: str | None) -> float: ...

    def generate(self, messages: list[Message], max_tokens: int) -> Any: ...


def judge_models(
    model: AnsweringModel,
    teacher: Teacher,
    prompts: Sequence[list[Message]],
    candidate_dir: str,
    incumbent_dir: str | None,
    *,
    max_tokens: int = 256,
    gate_promote: bool | None = None,
) -> JudgeReport:
    """Answer each prompt with the incumbent (None: the base) and the candidate, then judge.

    The candidate's adapter is left applied, as the gate leaves it. A teacher failure on one
    pair counts that pair as a tie (both orders "invalid"); three in a row, or a spent budget,
    raise (`TeacherError`).
    """
    model.use(incumbent_dir)
    reference = [str(model.generate(p, max_tokens).text) for p in prompts]
    model.use(candidate_dir)
    answers = [str(model.generate(p, max_tokens).text) for p in prompts]
    verdicts, failed = [], 0
    for i, (prompt, cand, ref) in enumerate(zip(prompts, answers, reference, strict=True)):
        try:
            verdicts.append(judge_pair(teacher, prompt, cand, ref, f"gate:{i}"))
            failed = 0
        except BudgetExhausted:
            raise
        except TeacherError:
            failed += 1
            if failed >= MAX_FAILURES_IN_A_ROW:  # a dead teacher: stop asking
                raise
            verdicts.append(PairVerdict(f"gate:{i}", "invalid", "invalid", "tie"))
    return summarise(verdicts, gate_promote)


def held_out_prompts(test_path: Path, count: int) -> list[list[Message]]:
    """The conversation before the last assistant turn of the first `count` usable test rows."""
    prompts: list[list[Message]] = []
    for messages in load_rows(test_path):
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=0)
        if last > 0:
            prompts.append(messages[:last])
        if len(prompts) >= count:
            break
    return prompts


def judge_gate(
    report: EvalReport,
    model: AnsweringModel,
    teacher: Teacher,
    test_path: Path,
    prompts: int,
    max_tokens: int = 256,
) -> None:
    """Add the judge's verdict on the gate's candidate and reference to `report` (`judge`).

    Informative only: the loss-based decision stands, and the report says whether the judge
    agrees with it. A judge that cannot run leaves a note instead of failing the gate.
    """
    try:
        verdict = judge_models(
            model,
            teacher,
            held_out_prompts(test_path, prompts),
            report.candidate,
            report.incumbent,
            max_tokens=max_tokens,
            gate_promote=report.gate.promote,
        )
    except SamBrainError as err:
        report.notes.append(f"judge: {err}")
        return
    report.judge = verdict.to_dict()
    against = "incumbent" if report.incumbent else "base"
    report.notes.append(
        f"judge: candidate won {verdict.wins}, lost {verdict.losses}, tied {verdict.ties} of"
        f" {verdict.pairs} against the {against} (binomial p={verdict.p_value:.3g});"
        f" {'agrees' if verdict.agrees_with_gate else 'disagrees'} with the loss-based decision"
    )


# -- the hand-labelled alignment set ---------------------------------------------------------------


@dataclass(frozen=True)
class LabelledPair:
    """One request with two answers and which one a person judged better ("a" or "b")."""

    id: str
    prompt: list[Message]
    a: str
    b: str
    better: str
    source: dict[str, Any]


def load_alignment(path: Path = ALIGNMENT_SET) -> list[LabelledPair]:
    """The labelled pairs (one JSON object per line)."""
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("better") not in ("a", "b"):
            raise ValueError(f"{path.name} line {n}: 'better' must be 'a' or 'b'")
        out.append(
            LabelledPair(row["id"], row["prompt"], row["a"], row["b"], row["better"], row["source"])
        )
    return out


@dataclass
class AlignmentReport:
    """How often the judge picks the answer a person labelled better."""

    pairs: int
    agree: int  # the judge preferred the labelled answer
    disagree: int  # the judge preferred the other answer
    ties: int
    invalid: int
    position_flips: int
    agreement: float  # agree / pairs (a tie counts as not agreeing)
    agreement_decided: float  # agree / (agree + disagree)
    p_value: float  # two-sided binomial test of agree vs. disagree (chance = 1/2)
    verdicts: list[PairVerdict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def alignment(teacher: Teacher, pairs: Sequence[LabelledPair]) -> AlignmentReport:
    """Judge every labelled pair in both orders, with the labelled-better answer as "candidate"."""
    verdicts = []
    for pair in pairs:
        good, bad = (pair.a, pair.b) if pair.better == "a" else (pair.b, pair.a)
        verdicts.append(judge_pair(teacher, pair.prompt, good, bad, pair.id))
    s = summarise(verdicts)
    decided = s.wins + s.losses
    return AlignmentReport(
        pairs=s.pairs,
        agree=s.wins,
        disagree=s.losses,
        ties=s.ties,
        invalid=s.invalid,
        position_flips=s.position_flips,
        agreement=s.wins / s.pairs if s.pairs else 0.0,
        agreement_decided=s.wins / decided if decided else 0.0,
        p_value=s.p_value,
        verdicts=verdicts,
    )
