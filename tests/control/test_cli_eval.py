"""`samctl eval` end to end on a temp home with the tiny model and a real adapter: the
table per category and source, the report JSON under the home's reports folder, the event, and
one-line errors for unknown versions and malformed case files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deployment.benchmarks import score_case
from deployment.cases import load_cases
from sam_brain.config_load import load_config
from sam_brain.control.cli import main
from sam_brain.home import Home

CASES = [
    {"id": "ls", "category": "shell", "prompt": "How do I list files?", "keywords": ["ls"]},
    {"id": "log", "category": "git", "prompt": "How do I see history?", "scoring": "exact",
     "expected": "git log"},
    {"id": "cfg", "category": "json", "source": "builtin", "prompt": "Give the config as JSON.",
     "scoring": "json", "schema": {"type": "object"}},
]  # fmt: skip


def random_adapter(model_dir: Path, out: Path) -> Path:
    """Real mlx-lm adapter files of the tiny model with random LoRA weights (no training needed:
    `samctl eval` only has to answer with it)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model = load(str(model_dir))[0]
    model.freeze()
    lora = {"rank": 4, "scale": 4.0, "dropout": 0.0, "keys": ["self_attn.q_proj"]}
    linear_to_lora_layers(model, 2, lora)
    mx.random.seed(3)
    weights = {
        k: mx.random.normal(v.shape) * 0.2 for k, v in tree_flatten(model.trainable_parameters())
    }
    out.mkdir(parents=True)
    mx.save_safetensors(str(out / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": lora}
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture
def home_dir(home_env: Path, tiny_model: Path) -> tuple[Path, Path]:
    (home_env / "config.toml").write_text(
        f'[training]\nmlx_base_model = "{tiny_model}"\nbackend = "mlx"\n'
        "[deployment]\ngate_case_max_tokens = 6\n"
    )
    home = Home.open(load_config())
    adapter = random_adapter(tiny_model, home_env / "adapter")
    home.versions.register(adapter)  # v1.0.0
    home.versions.register(adapter)  # v1.0.1: the same weights
    home.close()
    cases = home_env / "tasks.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in CASES))
    return home_env, cases


def test_samctl_eval_against_the_base(
    home_dir: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    home, cases = home_dir
    assert main(["eval", "v1.0.0", "--cases", str(cases)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"3 task cases from {cases}"
    assert out[1].split() == ["group", "cases", "base", "v1.0.0"]
    groups = [line.split()[0] for line in out[2:8]]
    assert groups == ["git", "json", "shell", "source:", "source:", "all"]
    assert out[8].startswith("v1.0.0 vs base: better on ")
    report_path = Path(out[-1].removeprefix("report: "))
    assert report_path.parent == home / "reports" and report_path.name.startswith(
        "tasks-v1.0.0-vs-base-"
    )
    doc = json.loads(report_path.read_text())
    assert set(doc["reports"]) == {"base", "v1.0.0"} and doc["cases"] == 3
    # Every stored score is the scorer's score of the stored answer (greedy, 6 tokens at most).
    for side in ("base", "v1.0.0"):
        for case, result in zip(load_cases(cases), doc["reports"][side]["results"], strict=True):
            assert result["score"] == score_case(case, result["output"]).score
        sources = doc["reports"][side]["sources"]
        assert (sources["tasks"]["cases"], sources["builtin"]["cases"]) == (2, 1)
    table_all = out[7].split()
    assert float(table_all[2]) == pytest.approx(doc["reports"]["base"]["score"], abs=5e-4)
    opened = Home.open(load_config())
    event = opened.store.events("benchmarked")[0]["data"]
    opened.close()
    assert event["version"] == "v1.0.0" and event["against"] == "base"
    assert event["report"] == str(report_path)


def test_samctl_eval_between_versions_and_errors(
    home_dir: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    home, cases = home_dir
    assert main(["eval", "v1.0.1", "--against", "v1.0.0", "--cases", str(cases), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # The same weights answer the same: every case ties, nothing is worse.
    assert doc["comparison"]["ties"] == 3 and doc["p_worse"] == 1.0 and not doc["blocked"]
    assert doc["reference"] == "v1.0.0" and Path(doc["report"]).is_file()

    assert main(["eval", "v9.9.9", "--cases", str(cases)]) == 3
    assert capsys.readouterr().err.startswith("samctl: ")
    bad = home / "bad.jsonl"
    bad.write_text(json.dumps(CASES[0]) + "\n" + '{"category": "x", "prompt": "p"}\n')
    assert main(["eval", "v1.0.0", "--cases", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}:2: 'scoring' must be one of" in err
    assert main(["eval", "v1.0.0"]) == 2  # no --cases and no deployment.gate_cases
    assert "no case files" in capsys.readouterr().err
    assert main(["eval", "v1.0.0", "--against", "v1.0.0", "--cases", str(cases)]) == 2


def test_samctl_eval_of_a_named_training_uses_its_versions_and_cases(
    home_env: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = home_env / "gh-cases.jsonl"
    cases.write_text("".join(json.dumps(c) + "\n" for c in CASES[:2]))
    (home_env / "config.toml").write_text(
        f'[training]\nmlx_base_model = "{tiny_model}"\nbackend = "mlx"\n'
        "[deployment]\ngate_case_max_tokens = 4\n"
        f'[trainings.gh]\nsources = ["git"]\ngate_cases = ["{cases}"]\n'
    )
    root = Home.open(load_config())
    gh = root.for_training("gh")
    version = gh.versions.register(random_adapter(tiny_model, home_env / "adapter")).version
    assert version == "gh-v1.0.0"
    root.close()
    # The default training has no cases and no versions: the same command is refused there.
    assert main(["eval", "v1.0.0"]) == 2
    assert "no case files" in capsys.readouterr().err
    assert main(["eval", "v1.0.0", "--cases", str(cases)]) == 3
    capsys.readouterr()
    assert main(["eval", version, "--cases", str(cases)]) == 3  # not the default's version
    capsys.readouterr()
    assert main(["eval", version, "--training", "gh", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cases"] == 2 and set(doc["reports"]) == {"base", version}
    assert main(["eval", version, "--training", "nope"]) == 3
    assert "nope" in capsys.readouterr().err
