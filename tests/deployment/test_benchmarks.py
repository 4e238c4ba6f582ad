"""Task cases: loading with line-numbered errors, the three scorings with exact scores, per
category/source stats, and the paired verdict of `deployment.task_gate` on scripted answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deployment import benchmarks as bench
from deployment.cases import load_case_files, load_cases
from deployment.resident import Completion, Halted
from deployment.task_gate import (
    category_table,
    resolve_case_files,
    task_gate,
    task_markdown,
    with_tasks,
)
from sam_brain.errors import BadRequest
from sam_brain.protocols import Message

SCHEMA = {
    "type": "object",
    "properties": {"command": {"enum": ["pr", "issue"]}, "limit": {"type": "integer"}},
    "required": ["command"],
}
CASES: list[dict[str, Any]] = [
    {"id": "ls", "category": "shell", "prompt": "list files", "keywords": ["ls", "-la"],
     "min_words": 4},
    {"id": "wc", "category": "shell", "prompt": "count lines", "keywords": ["wc", "-l", "file"]},
    {"id": "log", "category": "git", "prompt": "history", "scoring": "exact",
     "expected": "git log --oneline"},
    {"id": "case", "category": "git", "prompt": "status", "scoring": "exact",
     "expected": "Git Status", "ignore_case": True},
    {"id": "pr", "category": "cli", "prompt": "open prs", "scoring": "json", "schema": SCHEMA},
    {"id": "bad-type", "category": "cli", "prompt": "ten prs", "schema": SCHEMA},
    {"id": "eq", "category": "cli", "prompt": "config", "scoring": "json",
     "expected": '{"rank": 8}'},
    {"id": "broken", "category": "cli", "prompt": "broken", "scoring": "json"},
    {"id": "conv", "category": "shell", "source": "builtin",
     "messages": [{"role": "system", "content": "Answer with a command."},
                  {"role": "user", "content": "make a folder"}],
     "scoring": "exact", "expected": "mkdir -p x"},
]  # fmt: skip
ANSWERS = {
    "list files": "Run ls -la here",  # 2/2 keywords, 4/4 words: 1.0
    "count lines": "wc -l",  # 2/3 keywords, 2/20 words: 0.7 * 2/3 + 0.3 * 0.1
    "history": "  git log\n--oneline ",  # whitespace does not count: 1.0
    "status": "```\ngit status\n```",  # fenced, case ignored: 1.0
    "open prs": '```json\n{"command": "pr", "limit": 5}\n```',  # valid and conforms: 1.0
    "ten prs": '{"command": "pr", "limit": "ten"}',  # valid, breaks the schema: 0.5
    "config": '{"rank": 4}\n```',  # a stray closing fence; valid, not the expected value: 0.5
    "broken": 'Here it is: {"rank": 8}',  # prose + JSON is not JSON, no target: 0.0
    "make a folder": "mkdir -p x/",  # not exact: 0.0
}
EXPECTED = [1.0, 0.7 * 2 / 3 + 0.3 * 2 / 20, 1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0]


def write_cases(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def answer(messages: list[Message], max_tokens: int) -> str:
    return ANSWERS[str(messages[-1]["content"])]


def test_scores_are_exact_per_scoring_rule(tmp_path: Path) -> None:
    cases = load_cases(write_cases(tmp_path / "builtin.jsonl", CASES))
    assert [c.scoring for c in cases] == ["keywords", "keywords", "exact", "exact", "json",
                                          "json", "json", "json", "exact"]  # fmt: skip
    report = bench.run_benchmark(cases, answer)
    assert report.scores() == pytest.approx(EXPECTED)
    by_id = {r.id: r for r in report.results}
    assert by_id["wc"].missing_keywords == ["file"] and by_id["wc"].why() == "missing 'file'"
    assert by_id["wc"].keyword_recall == pytest.approx(2 / 3)
    assert by_id["bad-type"].schema_error == "schema: limit: 'ten' is not of type 'integer'"
    assert (by_id["bad-type"].json_valid, by_id["bad-type"].conforms) == (True, False)
    assert by_id["eq"].exact_match is False and by_id["eq"].why().startswith("JSON differs")
    assert by_id["broken"].why() == "not JSON" and by_id["conv"].exact_match is False
    assert by_id["pr"].why() == "" and by_id["conv"].source == "builtin"
    assert by_id["ls"].source == "builtin"  # default: the file's stem
    assert cases[-1].messages[0] == {"role": "system", "content": "Answer with a command."}
    assert report.score == pytest.approx(sum(EXPECTED) / 9)


def test_stats_per_category_and_source(tmp_path: Path) -> None:
    cases = load_case_files(
        [write_cases(tmp_path / "a.jsonl", CASES[:4]), write_cases(tmp_path / "b.jsonl", CASES[4:])]
    )
    report = bench.run_benchmark(cases, answer)
    shell, git, cli = (report.categories[k] for k in ("shell", "git", "cli"))
    assert (shell.cases, git.cases, cli.cases) == (3, 2, 4)
    assert shell.score == pytest.approx((EXPECTED[0] + EXPECTED[1] + 0.0) / 3)
    assert shell.keyword_recall == pytest.approx((1 + 2 / 3) / 2)
    assert shell.exact_match_rate == 0.0 and git.exact_match_rate == 1.0
    assert cli.json_valid_rate == 0.75 and cli.exact_match_rate == 0.0  # only "eq" has a value
    assert git.json_valid_rate is None and git.keyword_recall is None
    assert set(report.sources) == {"a", "b", "builtin"}
    assert report.sources["a"].cases == 4 and report.sources["a"].score == pytest.approx(
        sum(EXPECTED[:4]) / 4
    )
    assert json.loads(json.dumps(report.to_dict()))["sources"]["b"]["cases"] == 4


def test_generator_failure_is_that_case_result(tmp_path: Path) -> None:
    cases = load_cases(write_cases(tmp_path / "c.jsonl", CASES[:3]))

    def flaky(messages: list[Message], max_tokens: int) -> str:
        if messages[-1]["content"] == "history":
            raise RuntimeError("model crashed")
        return answer(messages, max_tokens)

    report = bench.run_benchmark(cases, flaky)
    assert report.results[2].error == "RuntimeError: model crashed"
    assert report.results[2].score == 0.0 and report.results[0].score == 1.0

    def halted(messages: list[Message], max_tokens: int) -> str:
        raise Halted("the model is stopping")

    with pytest.raises(Halted):  # shutdown is no verdict, never "every case failed"
        bench.run_benchmark(cases, halted)


def test_malformed_case_files_name_every_bad_line(tmp_path: Path) -> None:
    bad = write_cases(
        tmp_path / "bad.jsonl",
        [
            CASES[0],
            "{not json",
            {"category": "", "keywords": "ls"},
            {"category": "x", "prompt": "p", "scoring": "exact"},
            {"category": "x", "prompt": "p", "scoring": "json", "schema": {"type": "nope"}},
            {"category": "x", "prompt": "p", "messages": [], "keywords": ["a"]},
            {
                "category": "x",
                "messages": [{"role": "assistant", "content": "a"}],
                "keywords": ["a"],
            },
            {"category": "x", "prompt": "p", "keywords": ["a"], "max_tokens": 0, "colour": 1},
            {"id": "ls", "category": "x", "prompt": "p", "keywords": ["a"]},
            {"category": "x", "prompt": "p"},
        ],
    )
    with pytest.raises(BadRequest) as err:
        load_cases(bad)
    msg = str(err.value)
    assert "\n" not in msg
    parts = msg.split("; ")
    assert parts[0].startswith(f"{bad}:2: not JSON")
    assert f"{bad}:3: 'category' must be a non-empty string" in msg
    assert "give exactly one of 'prompt' (text) or 'messages'" in msg
    assert "'keywords' must be a list of non-empty strings" in msg
    assert f"{bad}:4: exact scoring needs 'expected' as a string" in msg
    assert f"{bad}:5: 'schema' is not a valid JSON Schema" in msg
    assert f"{bad}:7: 'messages' must end before the answer" in msg
    assert f"{bad}:8: unknown field(s) 'colour'" in msg and "'max_tokens' must be a positive" in msg
    assert f"{bad}:9: duplicate id 'ls'" in msg
    assert f"{bad}:10: 'scoring' must be one of exact, json, keywords (or give keywords" in msg
    empty = write_cases(tmp_path / "empty.jsonl", [""])
    with pytest.raises(BadRequest, match=r"empty\.jsonl: no cases"):
        load_cases(empty)
    with pytest.raises(BadRequest, match="cannot read it"):
        load_cases(tmp_path / "missing.jsonl")
    a = write_cases(tmp_path / "a.jsonl", CASES[:1])
    with pytest.raises(BadRequest, match=r"case id 'ls' is also in .*a\.jsonl"):
        load_case_files([a, write_cases(tmp_path / "b.jsonl", CASES[:1])])


def test_a_case_round_trips_through_its_row(tmp_path: Path) -> None:
    cases = load_cases(write_cases(tmp_path / "c.jsonl", CASES))
    again = load_cases(write_cases(tmp_path / "d.jsonl", [c.to_row() for c in cases]))
    assert again == cases


class Scripted:
    """A model whose answers depend on the adapter in use (for the verdict's arithmetic)."""

    def __init__(self, answers: dict[str | None, dict[str, str]]) -> None:
        self.answers = answers
        self.applied: str | None = None
        self.used: list[str | None] = []

    def use(self, adapter_dir: str | None) -> float:
        self.applied = adapter_dir
        self.used.append(adapter_dir)
        return 0.0

    def generate(self, messages: list[Message], max_tokens: int) -> Completion:
        text = self.answers[self.applied].get(str(messages[-1]["content"]), "")
        return Completion(text, "stop", 1, 1)


CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Peru": "Lima",
            "Chile": "Santiago", "Kenya": "Nairobi"}  # fmt: skip


def capital_cases(path: Path) -> Path:
    return write_cases(
        path,
        [
            {"id": f"cap-{c.lower()}", "category": "geo", "prompt": f"Capital of {c}?",
             "keywords": [city], "min_words": 1}
            for c, city in CAPITALS.items()
        ],
    )  # fmt: skip


def test_task_gate_blocks_a_candidate_worse_on_every_case(tmp_path: Path) -> None:
    cases = capital_cases(tmp_path / "geo.jsonl")
    right = {f"Capital of {c}?": city for c, city in CAPITALS.items()}
    wrong = {f"Capital of {c}?": "Berlin" for c in CAPITALS}
    model = Scripted({None: right, "inc": right, "bad": wrong, "good": right})
    report = task_gate(model, [cases], "bad", "inc")
    assert model.used == [None, "inc", "bad"] and model.applied == "bad"
    assert report.reference == "incumbent" and report.cases == 6
    assert report.reports["candidate"].score == pytest.approx(0.3)  # length only
    assert report.p_worse == pytest.approx(1 / 64) and report.blocked
    reason = report.reasons[0]
    assert reason.startswith("task cases: candidate is significantly worse than the incumbent")
    assert "worse on 6, better on 0; wilcoxon p_worse=0.0156" in reason
    assert "cap-france [geo] 1.00 -> 0.30 (missing 'Paris')" in reason
    assert with_tasks(True, ["loss ok"], report) == (False, report.reasons)
    assert with_tasks(False, ["loss bad"], report) == (False, ["loss bad", *report.reasons])
    rows = category_table(report)
    assert rows[0] == {"group": "geo", "kind": "category", "cases": 6, "base": 1.0,
                       "incumbent": 1.0, "candidate": pytest.approx(0.3)}  # fmt: skip
    assert rows[1]["kind"] == "source" and rows[-1]["group"] == "all"
    assert "| geo | 6 | 1.000 | 1.000 | 0.300 |" in task_markdown(report)

    same = task_gate(model, [cases], "good", None)
    assert same.reference == "base" and not same.blocked and same.p_worse == 1.0
    assert with_tasks(True, ["loss ok"], same) == (True, ["loss ok", *same.reasons])
    # One case lost of six (the rest tie) is no evidence: sign test p_worse = 1/2.
    few = dict(right, **{"Capital of France?": "Berlin"})
    one = task_gate(Scripted({None: right, "c": few}), [cases], "c", test="sign")
    assert not one.blocked and one.p_worse == pytest.approx(0.5)


def test_unreadable_case_files_block_with_their_problem(tmp_path: Path) -> None:
    bad = write_cases(tmp_path / "bad.jsonl", ["{oops"])
    model = Scripted({})
    report = task_gate(model, [bad], "cand")
    assert report.blocked and model.used == []
    assert report.reasons == [f"task cases: {bad}:1: not JSON (Expecting property name enclosed"
                              " in double quotes)"]  # fmt: skip


def test_case_paths_from_config(tmp_path: Path) -> None:
    files = resolve_case_files(["builtin:coding", "tasks.jsonl", "/abs/x.jsonl"], tmp_path)
    assert files[1:] == [tmp_path / "tasks.jsonl", Path("/abs/x.jsonl")]
    shipped = load_cases(files[0])
    assert len(shipped) == 10 and {c.source for c in shipped} == {"builtin"}
    assert {c.scoring for c in shipped} == {"keywords", "exact", "json"}
    with pytest.raises(BadRequest, match=r"nope\.jsonl: cannot read it"):
        load_cases(resolve_case_files(["builtin:nope"], tmp_path)[0])
