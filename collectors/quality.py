"""Score a parsed session, or one sample's window of it, on six dimensions and sort it into a tier.

The dimensions are completion, depth, domain relevance, tool richness, thinking and error ratio
(higher is better for all six). The overall score is their weighted mean, and the tier follows
from it: A >= 0.7, B >= 0.4, C below. `score_conversation` scores a whole session (it decides which
curation strategies use it); `score_window` scores the turns one sample trains on, where an
exchange only counts as completed when its answer is grounded: not a claim of an action no tool
call made, not a plan the user rejected, not an answer to a prompt whose referent is missing.
Each formula is simple on purpose and is written out in docs/quality.md; the weights, thresholds
and domain keywords live in `QualityConfig`.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only the shape is needed; sam_brain must not import plug-ins at runtime
    from collectors.transcript import Conversation
    from collectors.transcript_lines import Turn

DIMENSIONS = ("completion", "depth", "domain", "tools", "thinking", "errors")

# Software-development vocabulary; a session mentioning ~8 distinct terms is fully "on domain".
DEFAULT_KEYWORDS = (
    "api", "async", "branch", "bug", "build", "cache", "class", "cli", "commit", "compile",
    "config", "database", "debug", "deploy", "dependency", "docker", "endpoint", "error",
    "exception", "function", "git", "import", "implement", "javascript", "lint", "merge",
    "method", "migration", "module", "package", "parser", "pytest", "python", "query",
    "refactor", "regex", "repository", "rust", "schema", "script", "server", "sql",
    "stack trace", "test", "tests", "typescript", "variable",
)  # fmt: skip


@dataclass(frozen=True)
class QualityConfig:
    """Scoring knobs (see docs/quality.md for the formulas).

    Args:
        keywords: domain terms, matched case-insensitively as whole words.
        weights: dimension -> weight of the overall score (normalised by their sum).
        keyword_target: distinct keyword hits that give domain relevance 1.0.
        depth_target: assistant turns that give depth 1.0 (log scale).
        tool_kinds_target: distinct tools that give the "variety" half of tool richness 1.0.
        tool_calls_target: tool calls that give the "volume" half of tool richness 1.0.
        interrupt_penalty: subtracted from completion per user interrupt.
        tier_a: overall score at or above which a session is tier A.
        tier_b: overall score at or above which a session is tier B (else C).
    """

    keywords: tuple[str, ...] = DEFAULT_KEYWORDS
    weights: dict[str, float] = field(
        default_factory=lambda: {
            "completion": 0.25,
            "depth": 0.15,
            "domain": 0.15,
            "tools": 0.15,
            "thinking": 0.10,
            "errors": 0.20,
        }
    )
    keyword_target: int = 8
    depth_target: int = 20
    tool_kinds_target: int = 4
    tool_calls_target: int = 10
    interrupt_penalty: float = 0.1
    tier_a: float = 0.7
    tier_b: float = 0.4


# An answer that reports an action as done ("Done! Here's the output of `ls -la`...").
_CLAIM = re.compile(
    r"(?im)(?:^[-*•\s]*(?:✅\s*)?(?:created|executed|ran|wrote|updated|deleted|installed|fixed)\b|"
    r"here['’]s what i (?:did|changed)\b)|\b(?:done\b[!.]|here(?:['’]s| is) the (?:output|result)|i(?:['’]ve| have)? (?:created|ran|run|"
    r"executed|updated|added|fixed|written|wrote|deleted|removed|installed|edited|modified|renamed|"
    r"moved|committed|pushed)\b|(?:has|have) been (?:created|updated|added|fixed|written|deleted|"
    r"removed|installed|committed)\b|successfully (?:created|ran|updated|installed|added|wrote|"
    r"deleted|executed|committed|read)\b|i['’]ve shown\b|as expected, the\b|(?:the )?(?:command|script|"
    r"build|tests?) (?:ran|failed|passed|succeeded|completed|executed|returned)\b|"
    r"(?:is|are) (?:now )?(?:pushed|committed|deployed|installed)\b)"
)
# Tool results Claude Code writes when the user rejects or interrupts a call.
REJECTED_PREFIXES = (
    "The user doesn't want to proceed with this tool use",
    "The user doesn't want to take this action",
    "User rejected",
    "[Request interrupted by user for tool use]",
)
# A short prompt that points at something ("fix these", "why does it fail?").
_DEICTIC = re.compile(
    r"(?i)\b(?:these|this|that|those|it|them|above|did you|have you|the (?:errors?|output|issues?|"
    r"bugs?|logs?|failures?))\b"
)
_SHORT_PROMPT_WORDS = 12


@dataclass(frozen=True)
class Score:
    """Per-dimension scores, their weighted mean and the tier it falls in.

    `flags` counts, for a window score, the exchanges that were not completed and why
    (`unexecuted_claim`, `rejected_call`, `context_free`); `config` is what it was scored with.
    """

    dims: dict[str, float]
    overall: float
    tier: str
    flags: dict[str, int] = field(default_factory=dict)
    config: QualityConfig | None = field(default=None, repr=False, compare=False)
    # Keyword hits per text: a session's samples reuse its texts, so each is searched once.
    hits: dict[str, frozenset[str]] = field(default_factory=dict, repr=False, compare=False)


def tier_for(overall: float, config: QualityConfig | None = None) -> str:
    """The tier of an overall score: "A" (>= tier_a), "B" (>= tier_b) or "C"."""
    config = config or QualityConfig()
    if overall >= config.tier_a:
        return "A"
    return "B" if overall >= config.tier_b else "C"


def exchanges(turns: list[Turn]) -> list[list[Turn]]:
    """Split turns at each user prompt and each event-triggered assistant turn.

    Turns before the first prompt, and those answering a background event (a finished task),
    form exchanges that start with an assistant turn.
    """
    groups: list[list[Turn]] = []
    for turn in turns:
        if turn.role == "user" or turn.trigger or not groups:
            groups.append([])
        groups[-1].append(turn)
    return groups


@functools.lru_cache(maxsize=8)
def keyword_pattern(keywords: tuple[str, ...]) -> re.Pattern[str]:
    """Any keyword, lowercased, as a whole word; built once per keyword set.

    The keywords are merged into a prefix tree (`api|async` becomes `a(?:pi|sync)`), which
    the regex engine tries about twice as fast as a flat alternation, whenever that finds the
    same matches: when no two keywords can both match at one place in a text.
    """
    words = [k.lower() for k in keywords]
    if all(words) and not any(_both_match(a, b) for a in words for b in words):
        body = _prefix_tree(words)
    else:
        body = "|".join(re.escape(w) for w in words)
    return re.compile(rf"\b(?:{body})\b")


def _both_match(short: str, long: str) -> bool:
    """Whether `short` and `long` can both match as whole words at one place in a text.

    Only a proper prefix can, and only when a word boundary can fall right after it.
    """
    if len(short) >= len(long) or not long.startswith(short):
        return False
    return _is_word(short[-1]) != _is_word(long[len(short)])


def _is_word(char: str) -> bool:
    return re.match(r"\w", char) is not None


def _prefix_tree(words: list[str]) -> str:
    """A regex matching exactly `words` that shares their common prefixes."""
    by_first: dict[str, list[str]] = {}
    ends = False
    for word in words:
        if word:
            by_first.setdefault(word[0], []).append(word[1:])
        else:
            ends = True
    branches = [re.escape(c) + _prefix_tree(rests) for c, rests in sorted(by_first.items())]
    if not branches:
        return ""
    body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
    return f"(?:{body})?" if ends else body


def _clip(value: float) -> float:
    return max(0.0, min(1.0, value))


@dataclass
class _Counts:
    """What the dimensions are computed from, counted in one pass over the turns."""

    exchanges: int = 0  # exchanges (as `exchanges` splits them) with an assistant turn
    answered: int = 0  # ... that end on an assistant turn with text
    assistant: int = 0
    thinking: int = 0  # assistant turns with thinking
    calls: int = 0  # tool calls of assistant turns
    tool_names: set[str] = field(default_factory=set)
    results: int = 0
    errors: int = 0
    texts: list[str] = field(default_factory=list)  # user and assistant text, in order


def _count(turns: list[Turn]) -> _Counts:
    """Count what `score_conversation` needs; exchanges are split as `exchanges` splits them."""
    counts = _Counts()
    last: Turn | None = None  # the last turn of the current exchange
    with_assistant = False  # the current exchange has an assistant turn
    for turn in turns:
        if turn.role == "user" or turn.trigger or last is None:  # a new exchange
            if with_assistant and last is not None:
                counts.exchanges += 1
                counts.answered += last.role == "assistant" and bool(last.text)
            with_assistant = False
        last = turn
        if turn.role == "assistant":
            with_assistant = True
            counts.assistant += 1
            counts.thinking += bool(turn.thinking)
            counts.texts.append(turn.text)
            for call in turn.tool_calls:
                counts.calls += 1
                counts.tool_names.add(call["name"])
        elif turn.role == "user":
            counts.texts.append(turn.text)
        for result in turn.results:
            counts.results += 1
            counts.errors += bool(result["is_error"])
    if with_assistant and last is not None:
        counts.exchanges += 1
        counts.answered += last.role == "assistant" and bool(last.text)
    return counts


def score_conversation(conv: Conversation, config: QualityConfig | None = None) -> Score:
    """Score one conversation (its own turns; subagents are scored on their own).

    Args:
        conv: A parsed conversation.
        config: Weights, thresholds and keywords; the defaults when None.

    Returns:
        The six dimension scores, the overall score and the tier.
    """
    config = config or QualityConfig()
    counts = _count(conv.turns)
    completion = counts.answered / counts.exchanges if counts.exchanges else 0.0
    completion -= config.interrupt_penalty * conv.interrupts
    return _score(counts, completion, config, {}, memo={})


def score_window(
    turns: list[Turn], config: QualityConfig | None = None, session: Score | None = None
) -> Score:
    """Score the turns one sample trains on (a window, a single-turn pair, a subagent run).

    The dimensions are those of `score_conversation`, counted on `turns` alone; every rejected
    or interrupted tool call costs completion `interrupt_penalty`. The overall score is then
    scaled by the share of exchanges that are not flagged (see `window_flags`): a sample that
    teaches a false claim, a rejected plan or an answer without its referent is worth only its
    grounded part, so one such exchange alone is tier C.

    Args:
        turns: The sample's turns (user, assistant, tool), as curation cut them.
        config: Weights, thresholds and keywords; the session's, else the defaults, when None.
        session: The score of the session the turns come from (its keyword search is reused).
    """
    config = config or (session.config if session else None) or QualityConfig()
    counts = _count(turns)
    flags = window_flags(turns)
    flagged = flags.pop("flagged_exchanges", 0)
    completion = counts.answered / counts.exchanges if counts.exchanges else 0.0
    completion -= config.interrupt_penalty * flags.get("rejected_call", 0)
    grounded = 1 - flagged / counts.exchanges if counts.exchanges else 1.0
    kept = {k: int(v) for k, v in flags.items() if v}
    memo = session.hits if session is not None and session.config is config else {}
    return _score(counts, completion, config, kept, memo, grounded)


def window_flags(turns: list[Turn]) -> dict[str, float]:
    """Why exchanges of a window are not grounded, counted per reason.

    - `unexecuted_claim`: an exchange with no tool call whose answer reports an action as done.
    - `rejected_call`: tool calls whose result says the user rejected or interrupted them.
    - `context_free`: the window's first exchange answers, without any tool call, a short prompt
      that points at something ("fix these", "did you push?") while it carries no context.
    `flagged_exchanges` sums each exchange's share that is not grounded: 1 for a claim or a
    context-free answer, else its rejected calls over its calls (a loop with one rejected call
    among thirty keeps most of its worth).
    """
    flags: dict[str, float] = {
        "unexecuted_claim": 0, "rejected_call": 0, "context_free": 0, "flagged_exchanges": 0.0
    }  # fmt: skip
    # One pass, exchanges split as `exchanges` splits them: [first turn, calls, rejected, answers].
    groups: list[list[Any]] = []
    for turn in turns:
        if turn.role == "user" or turn.trigger or not groups:
            groups.append([turn, 0, 0, []])
        group = groups[-1]
        if turn.role == "assistant":
            group[1] += len(turn.tool_calls)
            group[3].append(turn.text)
        for result in turn.results:  # Claude Code marks a rejected call's result as an error
            group[2] += result["is_error"] and result["content"].startswith(REJECTED_PREFIXES)
    for index, (prompt, calls, rejected, answers) in enumerate(groups):
        if not answers:
            continue
        claim = not calls and any(_CLAIM.search(text) for text in answers)
        context_free = (
            index == 0
            and not calls
            and prompt.role == "user"
            and not (prompt.context or prompt.context_after)
            and len(prompt.text.split()) <= _SHORT_PROMPT_WORDS
            and _DEICTIC.search(prompt.text) is not None
        )
        flags["unexecuted_claim"] += claim
        flags["rejected_call"] += rejected
        flags["context_free"] += context_free
        share = 1.0 if claim or context_free else min(1.0, rejected / calls) if calls else 0.0
        flags["flagged_exchanges"] += share
    return flags


def _score(
    counts: _Counts,
    completion: float,
    config: QualityConfig,
    flags: dict[str, int],
    memo: dict[str, frozenset[str]],
    factor: float = 1.0,
) -> Score:
    depth = math.log1p(counts.assistant) / math.log1p(config.depth_target)

    hits: set[str] = set()
    if config.keywords:
        pattern = keyword_pattern(tuple(config.keywords))
        for text in counts.texts:
            if (found := memo.get(text)) is None:
                found = memo[text] = frozenset(pattern.findall(text.lower()))
            hits |= found
    domain = len(hits) / config.keyword_target

    tools = 0.5 * min(1.0, len(counts.tool_names) / config.tool_kinds_target)
    tools += 0.5 * min(1.0, counts.calls / config.tool_calls_target)

    thinking = 2 * counts.thinking / counts.assistant if counts.assistant else 0.0

    errors = 1 - counts.errors / counts.results if counts.results else 1.0

    dims = {
        "completion": _clip(completion),
        "depth": _clip(depth),
        "domain": _clip(domain),
        "tools": _clip(tools),
        "thinking": _clip(thinking),
        "errors": _clip(errors),
    }
    total = sum(config.weights.get(d, 0.0) for d in DIMENSIONS) or 1.0
    overall = sum(dims[d] * config.weights.get(d, 0.0) for d in DIMENSIONS) / total
    overall = round(overall * factor, 4)
    return Score(
        dims={d: round(v, 4) for d, v in dims.items()},
        overall=overall,
        tier=tier_for(overall, config),
        flags=flags,
        config=config,
        hits=memo,
    )
