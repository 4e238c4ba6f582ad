"""The evaluation gate (statistics, checks, decision, real losses) and task cases on a model."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployment import benchmarks as bench
from deployment.evaluate import (
    GateConfig,
    decide,
    evaluate_candidate,
    evaluate_version,
    prompts_from_rows,
)
from deployment.gen_checks import GenerationCheck, leaked_markers, repetition_rate
from deployment.resident import ResidentModel
from deployment.stats import sign_test, wilcoxon_signed_rank
from sam_brain.errors import BadRequest
from sam_brain.masking import encode_chat
from sam_brain.store import Store
from sam_brain.versions import Versions

QA = [
    ("How do I list files?", "Use ls -la to list all files in the folder."),
    ("How do I see git history?", "Run git log --oneline to see the commit history."),
    ("How do I count lines?", "Use wc -l file.txt to count the lines of a file."),
    ("How do I find a word?", "Use grep -rn word . to search for it in every file."),
    ("How do I make a folder?", "Use mkdir -p path/to/dir to create the folder."),
    ("How do I show disk use?", "Use du -sh * to show how much space each entry takes."),
]


def good(n: int = 1) -> GenerationCheck:
    return GenerationCheck("p", "fine answer", 0.0, True, [], False)


# -- statistics ---------------------------------------------------------------------------------


def test_sign_test_exact_values() -> None:
    diffs = [-0.1] * 8 + [0.2] * 2 + [0.0] * 3  # zeros are dropped: n = 10
    p_worse, p_better = sign_test(diffs)
    assert p_better == pytest.approx(56 / 1024)  # P(X <= 2), X ~ Bin(10, 1/2)
    assert p_worse == pytest.approx(1013 / 1024)  # P(X >= 2)
    assert sign_test([0.0, 0.0]) == (1.0, 1.0)
    assert sign_test([-1.0] * 2000)[1] == 0.0  # huge n does not overflow


def test_wilcoxon_exact_small_cases() -> None:
    assert wilcoxon_signed_rank([-1, -2, -3, -4, -5]) == pytest.approx((1.0, 1 / 32))
    # W+ = 1 (only the smallest difference is positive): P(W+ <= 1) = 2/32.
    assert wilcoxon_signed_rank([0.5, -2, -3, -4, -5])[1] == pytest.approx(2 / 32)
    # Ties: |d| = 1, 1 get rank 1.5 each; W+ = 1.5 -> W+ <= 1.5 in 2 of 4 sign patterns.
    assert wilcoxon_signed_rank([1.0, -1.0]) == pytest.approx((0.75, 0.75))


def test_wilcoxon_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    small = [rng.gauss(0.1, 1.0) for _ in range(20)]
    large = [rng.gauss(-0.05, 1.0) for _ in range(400)]
    for diffs, method, kwargs in ((small, "exact", {}), (large, "approx", {"correction": True})):
        worse, better = wilcoxon_signed_rank(diffs)
        ref_worse = stats.wilcoxon(diffs, alternative="greater", method=method, **kwargs).pvalue
        ref_better = stats.wilcoxon(diffs, alternative="less", method=method, **kwargs).pvalue
        assert (worse, better) == pytest.approx((ref_worse, ref_better), rel=1e-6)


# -- decision -----------------------------------------------------------------------------------


def test_consistently_better_candidate_is_promoted() -> None:
    ref = [2.0 + 0.1 * i for i in range(12)]
    cand = [r - 0.2 for r in ref]
    cmp, gate = decide(ref, cand, [good()], GateConfig(), "incumbent")
    assert gate.promote
    assert (cmp.n, cmp.better, cmp.worse) == (12, 12, 0)
    assert cmp.mean_diff == pytest.approx(-0.2)
    assert cmp.wilcoxon_p_better == pytest.approx(1 / 2**12)
    assert "candidate mean loss 2.3500 < incumbent 2.5500" in gate.reasons[0]


def test_lower_mean_from_one_outlier_but_worse_per_sample_is_rejected() -> None:
    ref = [2.0] * 12 + [9.0]
    cand = [2.1] * 12 + [1.0]  # mean drops (2.54 -> 2.02) but 12 of 13 samples got worse
    cmp, gate = decide(ref, cand, [], GateConfig(), "incumbent")
    assert not gate.promote
    assert cmp.worse == 12
    assert [r for r in gate.reasons if "significantly worse" in r]
    _, sign_gate = decide(ref, cand, [], GateConfig(test="sign"), "incumbent")
    assert not sign_gate.promote and "sign p=" in sign_gate.reasons[0]


def test_margin_and_required_significance() -> None:
    ref = [2.0, 2.1, 2.2]
    cand = [1.99, 2.09, 2.19]
    assert decide(ref, cand, [], GateConfig())[1].promote
    margin = decide(ref, cand, [], GateConfig(margin=0.05))[1]
    assert not margin.promote and "margin 0.05" in margin.reasons[0]
    strict = decide(ref, cand, [], GateConfig(require_significant=True))[1]
    assert not strict.promote and strict.reasons == [
        "improvement is not significant (wilcoxon p=0.125)"
    ]
    assert not decide([], [], [], GateConfig())[1].promote
    with pytest.raises(BadRequest, match="wilcoxon"):
        GateConfig(test="t-test")


def test_generation_checks_each_give_a_reason() -> None:
    checks = [
        GenerationCheck("p", "x", 0.5, False, ["<|im_start|>"], False),
        GenerationCheck("p", "", 0.0, True, [], True),
    ]
    _, gate = decide([2.0, 2.0], [1.0, 1.0], checks, GateConfig())
    assert not gate.promote
    assert gate.reasons == [
        "repetition: 25.0% of 4-grams repeat (max 5%)",
        "only 50% of answers ended within 256 tokens (need 75%)",
        "chat-template markers in answers: <|im_start|>",
        "1 of 2 answers are empty",
    ]


def test_generation_checks_are_judged_against_the_reference() -> None:
    def check(repetition: float, ended: bool, *leaked: str) -> GenerationCheck:
        return GenerationCheck("p", "x", repetition, ended, list(leaked), False)

    rambling = [check(0.5, False, "<|eot_id|>"), check(0.4, False, "<|eot_id|>")]
    # The base model rambles as much on these prompts: not the adapter's doing, promoted.
    same = [check(0.45, False, "<|eot_id|>"), check(0.45, False, "<|eot_id|>")]
    assert decide([2.0, 2.0], [1.0, 1.0], same, GateConfig(), "base", rambling)[1].promote
    # Worse than the reference by more than the slack: rejected, with the reference's figure.
    worse = [check(0.6, False, "<|eot_id|>", "<|im_start|>"), check(0.6, False)]
    _, gate = decide([2.0, 2.0], [1.0, 1.0], worse, GateConfig(), "base", rambling)
    assert gate.reasons == [
        "repetition: 60.0% of 4-grams repeat (max 5%, base 45.0%)",
        "chat-template markers in answers: <|im_start|>",
    ]
    # A reference that ends its answers: the candidate that stopped ending them is rejected.
    tidy = [check(0.0, True), check(0.0, True)]
    _, gate = decide([2.0, 2.0], [1.0, 1.0], same, GateConfig(), "incumbent", tidy)
    assert gate.reasons == [
        "repetition: 45.0% of 4-grams repeat (max 5%, incumbent 0.0%)",
        "only 0% of answers ended within 256 tokens (need 75%, incumbent 100%)",
        "chat-template markers in answers: <|eot_id|>",
    ]


def test_check_helpers() -> None:
    assert repetition_rate([1, 2, 3, 4, 1, 2, 3, 4], 4) == pytest.approx(0.2)
    assert repetition_rate([1, 2, 3], 4) == 0.0
    assert repetition_rate([7] * 10, 4) == pytest.approx(1 - 1 / 7)
    assert leaked_markers("ok <|im_end|> then <|im_start|>user") == ["<|im_end|>", "<|im_start|>"]
    rows = [
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "assistant", "content": "no prompt"}],
        [
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
            {"role": "user", "content": "e"},
            {"role": "assistant", "content": "f"},
        ],
    ]
    prompts = prompts_from_rows(rows, 5)
    assert [len(p) for p in prompts] == [1, 3] and prompts[1][-1]["content"] == "e"


# -- real losses on the tiny model --------------------------------------------------------------


def write_adapter(model_dir: Path, out: Path, seed: int, rows: list[Any], steps: int) -> Path:
    """A real mlx-lm adapter: random LoRA weights, then `steps` Adam steps on `rows`."""
    import mlx.core as mx
    import mlx.nn as nn
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    loaded: Any = load(str(model_dir))
    model, tok = loaded[0], loaded[1]
    model.freeze()
    lora = {"rank": 4, "scale": 4.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "mlp.down_proj"]}
    linear_to_lora_layers(model, 4, lora)
    mx.random.seed(seed)
    params: Any = tree_flatten(model.trainable_parameters())
    model.update(tree_unflatten([(k, mx.random.normal(v.shape) * 0.05) for k, v in params]))
    encoded = [encode_chat(tok, m, 256) for m in rows]

    def loss(mdl: Any, ids: mx.array, mask: mx.array) -> mx.array:
        ce = nn.losses.cross_entropy(mdl(ids[None, :-1])[0], ids[1:])
        return (ce * mask[1:]).sum() / mask[1:].sum()

    step = nn.value_and_grad(model, loss)  # type: ignore[attr-defined]
    opt = optim.Adam(learning_rate=3e-2)
    for i in range(steps):
        ids, mask = encoded[i % len(encoded)]
        _, grads = step(model, mx.array(ids), mx.array(mask, dtype=mx.float32))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
    out.mkdir(parents=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 4, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def setup(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("eval")
    rows = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
    test = root / "test.jsonl"
    test.write_text("".join(json.dumps({"messages": m}) + "\n" for m in rows))
    return {
        "test": test,
        "rows": rows,
        "incumbent": write_adapter(tiny_model, root / "incumbent", 1, rows, steps=0),
        "candidate": write_adapter(tiny_model, root / "candidate", 2, rows, steps=24),
        "resident": ResidentModel(tiny_model),
    }


def test_trained_candidate_beats_the_incumbent_on_every_row(
    setup: dict[str, Any], tmp_path: Path
) -> None:
    resident: ResidentModel = setup["resident"]
    versions = Versions(Store(tmp_path / "s.db"), tmp_path / "versions")
    versions.register(setup["incumbent"])
    versions.activate("v1.0.0")
    versions.register(setup["candidate"])
    report = evaluate_version(versions, resident, "v1.0.1", setup["test"], GateConfig(prompts=0))
    assert (report.rows, report.scored, report.skipped) == (6, 6, 0)
    assert report.incumbent == versions.get("v1.0.0").adapter_path
    base, inc, cand = report.base, report.incumbent_loss, report.candidate_loss
    assert inc is not None and inc.per_sample != base.per_sample
    assert cand.mean_loss < min(base.mean_loss, inc.mean_loss)
    assert report.comparison.reference == "incumbent" and report.comparison.better == 6
    assert report.comparison.wilcoxon_p_better == pytest.approx(1 / 64)
    assert report.gate.promote and report.gate.reasons[0].startswith(
        f"candidate mean loss {cand.mean_loss:.4f} < incumbent {inc.mean_loss:.4f}"
    )
    event = versions.store.events("evaluated")[0]["data"]
    assert event["promote"] and event["against"] == "v1.0.0"
    assert event["candidate_loss"] == pytest.approx(cand.mean_loss)
    assert json.loads(report.to_json())["candidate_loss"]["tokens"] == cand.tokens
    # Perplexity is the token-weighted one; row 0's loss matches a plain numpy computation.
    weighted = sum(x * n for x, n in zip(base.per_sample, _counts(setup), strict=True))
    assert base.perplexity == pytest.approx(math.exp(weighted / base.tokens), rel=1e-5)
    resident.use(None)
    ids, mask = encode_chat(resident.tokenizer, setup["rows"][0], 2048)
    logits = np.asarray(resident.model(_mx_array(ids[:-1]))[0], dtype=np.float64)
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = [-logp[i, t] for i, (t, m) in enumerate(zip(ids[1:], mask[1:], strict=True)) if m]
    assert base.per_sample[0] == pytest.approx(float(np.mean(picked)), rel=1e-4)


def test_untrained_adapter_against_the_base_is_rejected_with_reasons(
    setup: dict[str, Any],
) -> None:
    report = evaluate_candidate(
        setup["resident"],
        setup["test"],
        str(setup["incumbent"]),
        None,
        GateConfig(prompts=2, gen_max_tokens=12),
    )
    assert report.incumbent_loss is None and report.comparison.reference == "base"
    assert not report.gate.promote
    assert [c.terminated for c in report.generation] == [False, False]  # the tiny model rambles
    # ... and so does the base on the same prompts: the termination check is judged against it
    # and is not a reason; the loss is (repetition depends on the random weights' babble).
    assert [c.terminated for c in report.reference_generation] == [False, False]
    assert report.gate.reasons[:1] == [
        f"candidate mean loss {report.candidate_loss.mean_loss:.4f} is not below the base's"
        f" {report.base.mean_loss:.4f} (margin 0)"
    ]


def _counts(setup: dict[str, Any]) -> list[int]:
    tok = setup["resident"].tokenizer
    return [sum(encode_chat(tok, m, 2048)[1][1:]) for m in setup["rows"]]


def _mx_array(ids: list[int]) -> Any:
    import mlx.core as mx

    return mx.array(ids)[None]


# -- task cases on a real model -----------------------------------------------------------------


def test_benchmark_runs_a_real_model(setup: dict[str, Any], tmp_path: Path) -> None:
    """The gate's task cases through the resident model: greedy (the same answer twice) and
    rendered as training renders prompts (a system message is passed through)."""
    resident: ResidentModel = setup["resident"]
    resident.use(str(setup["candidate"]))
    generate = bench.model_generate(resident)
    rows = [
        {"category": "shell", "prompt": "How do I list files?", "keywords": ["ls", "-la"]},
        {"category": "shell", "messages": [{"role": "system", "content": "Be brief."},
         {"role": "user", "content": "How do I count lines?"}], "keywords": ["wc"],
         "max_tokens": 5},
    ]  # fmt: skip
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = bench.load_cases(path)
    report = bench.run_benchmark(cases, generate, max_tokens=8)
    assert [r.output for r in report.results] == [
        resident.generate(list(c.messages), n).text for c, n in zip(cases, (8, 5), strict=True)
    ]
    assert all(r.error == "" and 0.0 <= r.score <= 1.0 for r in report.results)
    assert report.categories["shell"].cases == 2 and report.sources["c"].cases == 2
