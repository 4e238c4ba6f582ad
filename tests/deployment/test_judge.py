"""The pairwise judge: both orders, combination, binomial test, the gate report, the alignment set."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deployment.evaluate import GateConfig, evaluate_candidate
from deployment.judge import (
    PairVerdict,
    alignment,
    binomial_two_sided,
    judge_gate,
    load_alignment,
    parse_verdict,
    summarise,
)
from deployment.resident import ResidentModel
from sam_brain.config import TeacherConfig
from teachers.openai_api import OpenAITeacher
from tests.scripted_openai import ScriptedServer, user_text

_ANSWERS = re.compile(r"## Answer 1\n(.*)\n\n## Answer 2\n(.*)\n\nWhich answer", re.S)


def answers(body: dict[str, Any]) -> tuple[str, str]:
    match = _ANSWERS.search(user_text(body))
    assert match is not None
    return match.group(1), match.group(2)


def prefers(good: Callable[[str], bool]) -> Callable[[dict[str, Any]], str]:
    """A judge script that picks the answer `good` accepts (TIE when both or neither)."""

    def script(body: dict[str, Any]) -> str:
        first, second = (good(a) for a in answers(body))
        return "TIE" if first == second else "1" if first else "Answer 2 is better."

    return script


def teacher(url: str) -> OpenAITeacher:
    return OpenAITeacher(
        TeacherConfig(provider="openai", model="judge", base_url=url, max_retries=0)
    )


def test_binomial_two_sided_exact() -> None:
    assert binomial_two_sided(9, 10) == pytest.approx(2 * (1 + 10) / 1024)
    assert binomial_two_sided(1, 10) == binomial_two_sided(9, 10)
    assert binomial_two_sided(3, 3) == pytest.approx(0.25)
    assert binomial_two_sided(5, 10) == 1.0 and binomial_two_sided(0, 0) == 1.0
    n, k = 40, 30
    assert binomial_two_sided(k, n) == pytest.approx(
        2 * sum(math.comb(n, i) for i in range(0, n - k + 1)) / 2**n
    )


def test_verdicts_combine_over_both_orders() -> None:
    def v(a: str, b: str, outcome: str) -> PairVerdict:
        return PairVerdict("k", a, b, outcome)

    s = summarise(
        [
            v("1", "2", "candidate"),  # consistent win
            v("2", "1", "incumbent"),  # consistent loss
            v("1", "1", "tie"),  # position bias: each order picked the first answer
            v("invalid", "tie", "tie"),
        ],
        gate_promote=True,
    )
    assert (s.wins, s.losses, s.ties, s.invalid, s.position_flips) == (1, 1, 2, 1, 1)
    assert s.win_rate == 0.5 and s.win_rate_ties_half == 0.5 and s.verdict == "tie"
    assert s.agrees_with_gate is False  # a tie does not argue for promoting
    assert parse_verdict("Answer 2.") == "2" and parse_verdict("tie") == "tie"
    assert parse_verdict("I cannot tell") == "invalid"


@pytest.fixture(scope="module")
def gate_setup(tiny_model: Path, lora_adapters: list[Path], tmp_path_factory: Any) -> Any:
    root = tmp_path_factory.mktemp("judge")
    rows = [
        [
            {"role": "user", "content": f"What does step {i} of the release do?"},
            {"role": "assistant", "content": f"Step {i} tags the build."},
        ]
        for i in range(4)
    ]
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    resident = ResidentModel(tiny_model, prompt_cache_entries=0)
    candidate, incumbent = str(lora_adapters[0]), str(lora_adapters[1])
    report = evaluate_candidate(resident, test, candidate, incumbent, GateConfig(prompts=0))
    resident.use(candidate)  # what the candidate answers (greedy, so the judge sees the same)
    texts = {resident.generate(m[:1], 8).text for m in rows[:3]}
    return resident, test, report, texts


def test_gate_judge_asks_both_orders_and_reports_agreement(gate_setup: Any) -> None:
    resident, test, report, cand_texts = gate_setup
    with ScriptedServer(prefers(lambda a: a in cand_texts)) as server:
        judge_gate(report, resident, teacher(server.url), test, prompts=3, max_tokens=8)
        calls = [answers(b) for b in server.calls]
    assert len(calls) == 6
    for first, second in zip(calls[::2], calls[1::2], strict=True):
        assert first == (second[1], second[0])  # the same pair, answers swapped
        assert first[0] in cand_texts and first[1] not in cand_texts  # candidate first, then second
    j = report.judge
    assert j is not None
    assert (j["pairs"], j["wins"], j["losses"], j["ties"], j["position_flips"]) == (3, 3, 0, 0, 0)
    assert j["p_value"] == pytest.approx(0.25) and j["win_rate"] == 1.0
    assert j["gate_promote"] == report.gate.promote
    assert j["agrees_with_gate"] == report.gate.promote
    assert report.notes[-1].startswith("judge: candidate won 3, lost 0, tied 0 of 3")


def test_a_position_biased_judge_ties_everything(gate_setup: Any) -> None:
    resident, test, report, _ = gate_setup
    with ScriptedServer(lambda body: "1") as server:
        judge_gate(report, resident, teacher(server.url), test, prompts=3, max_tokens=8)
        assert len(server.calls) == 6
    j = report.judge
    assert j is not None
    assert (j["wins"], j["losses"], j["ties"], j["position_flips"]) == (0, 0, 3, 3)
    assert j["p_value"] == 1.0 and j["verdict"] == "tie"


def test_a_dead_judge_leaves_a_note_and_the_gate_stands(gate_setup: Any) -> None:
    resident, test, report, _ = gate_setup
    promote = report.gate.promote
    report.judge = None
    with ScriptedServer(lambda body: 503) as server:
        judge_gate(report, resident, teacher(server.url), test, prompts=3, max_tokens=8)
        assert len(server.calls) == 3  # three failures in a row stop it
    assert report.judge is None and report.gate.promote == promote
    assert report.notes[-1].startswith("judge: teacher at ")


def test_alignment_set_is_shipped_and_scored() -> None:
    pairs = load_alignment()
    assert len(pairs) >= 30
    assert {p.better for p in pairs} == {"a", "b"}
    assert all(p.source["fixture"].startswith("claude-sessions/") for p in pairs)
    assert all(p.a.strip() and p.b.strip() and p.a != p.b for p in pairs)
    good = {p.a if p.better == "a" else p.b for p in pairs}
    with ScriptedServer(prefers(lambda a: a in good)) as server:
        perfect = alignment(teacher(server.url), pairs)
        assert len(server.calls) == 2 * len(pairs)
    assert perfect.agree == len(pairs) and perfect.agreement == 1.0
    assert perfect.p_value == pytest.approx(2 / 2 ** len(pairs))
    with ScriptedServer(lambda body: "2") as server:
        biased = alignment(teacher(server.url), pairs)
    assert (
        biased.ties == len(pairs)
        and biased.agreement == 0.0
        and biased.position_flips == len(pairs)
    )


def test_release_with_gate_judge_builds_the_teacher_from_config(
    tiny_model: Path, lora_adapters: list[Path], tmp_path: Path
) -> None:
    from sam_brain.config_load import parse_config
    from sam_brain.home import Home
    from sam_brain.train.release import release

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Q{i}?"},
                {"role": "assistant", "content": "A."},
            ]
        }
        for i in range(8)
    ]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    adapter = tmp_path / "adapter"
    shutil.copytree(lora_adapters[0], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "model": str(tiny_model)}))
    with ScriptedServer(lambda body: "TIE") as server:
        cfg = parse_config(
            {
                "data_dir": str(tmp_path / "data"),
                "deployment": {"gate_judge": True, "gate_judge_prompts": 3, "gate_prompts": 0},
                "teacher": {"provider": "openai", "model": "judge", "base_url": server.url},
            }
        )
        home = Home.open(cfg)
        out = release(
            home,
            adapter,
            base_model_dir=str(tiny_model),
            base_ref=str(tiny_model),
            test_path=test,
        )
        assert len(server.calls) == 6  # 3 prompts, both orders
    assert out.report is not None
    j = out.report["judge"]
    assert (j["pairs"], j["ties"], j["verdict"]) == (3, 3, "tie")
    assert j["agrees_with_gate"] == (not out.report["gate"]["promote"])
    assert any(
        n.startswith("judge: candidate won 0, lost 0, tied 3 of 3 against the base")
        for n in out.report["notes"]
    )
    home.close()


def test_alignment_bench_runs_against_any_openai_server(tmp_path: Path) -> None:
    from bench.judge_alignment import main

    pairs = load_alignment()[:3]
    good = {p.a if p.better == "a" else p.b for p in pairs}
    out = tmp_path / "align.json"
    with ScriptedServer(prefers(lambda a: a in good)) as server:
        assert (
            main(
                ["--base-url", server.url, "--model-id", "judge", "--limit", "3", "--out", str(out)]
            )
            == 0
        )
        assert len(server.calls) == 6
    doc = json.loads(out.read_text())
    assert (doc["pairs"], doc["agree"], doc["agreement"], doc["requests"]) == (3, 3, 1.0, 6)
    assert doc["raw_good_first"] == {"1": 3} and doc["raw_good_second"] == {"2": 3}
