from __future__ import annotations

from pathlib import Path

import pytest

from sam_brain.config import Config, default_config_path, default_home
from sam_brain.config_load import load_config, parse_config
from sam_brain.configdoc import render_config_doc
from sam_brain.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_match_the_documented_product() -> None:
    cfg = Config()
    assert (cfg.api.host, cfg.api.port) == ("127.0.0.1", 8765)
    assert cfg.training.min_for_training == 100
    assert cfg.training.mlx_base_model == "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit"
    assert cfg.training.cuda_base_model == "Qwen/Qwen2.5-7B-Instruct"
    assert cfg.training.max_runs_per_day == 3
    p8 = cfg.profiles["8gb"]
    assert (
        p8.lora_rank,
        p8.lora_alpha,
        p8.batch_size,
        p8.grad_accum,
        p8.max_seq_length,
        p8.num_layers,
        p8.grad_checkpoint,
        p8.learning_rate,
        p8.epochs,
    ) == (4, 8.0, 1, 4, 2048, 8, True, 1e-4, 1.0)
    full = cfg.profiles["full"]
    assert (full.lora_rank, full.lora_alpha, full.batch_size, full.max_seq_length, full.epochs) == (
        8,
        16.0,
        4,
        2048,
        3.0,
    )


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    f = tmp_path / "config.toml"
    f.write_text(
        '[api]\nport = "x"\nbogus = 1\n[training]\nmin_for_training = "many"\n'
        '[profiles.8gb]\nlora_rank = "a"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_config(f)
    msg = str(info.value)
    assert str(f) in msg
    for key in ("api.port", "api.bogus", "training.min_for_training", "profiles.8gb.lora_rank"):
        assert key in msg
    assert len(info.value.problems) == 4


def test_semantic_problems_are_collected() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "training": {"backend": "tpu", "profile": "nope", "nightly_window": "25:00-2"},
                "pipeline": {"split": [0.5, 0.5, 0.5]},
            },
            "c.toml",
        )
    assert len(info.value.problems) == 4


def test_profiles_override_and_extend() -> None:
    cfg = parse_config(
        {
            "training": {"profile": "mine"},
            "profiles": {"8gb": {"max_steps": 7}, "mine": {"lora_rank": 2}},
        }
    )
    assert cfg.profiles["8gb"].max_steps == 7 and cfg.profiles["8gb"].lora_rank == 4
    assert cfg.profile().lora_rank == 2
    assert cfg.profile().batch_size == 4  # a new profile starts from the dataclass defaults


def test_home_and_config_locations(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SAM_BRAIN_HOME", str(tmp_path))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    assert default_home() == tmp_path
    assert default_config_path() == tmp_path / "config.toml"
    monkeypatch.setenv("SAM_BRAIN_CONFIG", str(tmp_path / "other.toml"))
    assert default_config_path() == tmp_path / "other.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config()  # an explicitly named config must exist


def test_missing_default_config_means_defaults(home_env: Path) -> None:
    assert load_config() == Config()


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[api\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(f)


def test_docs_config_md_is_in_sync() -> None:
    doc = (REPO / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == render_config_doc(), "run: samctl config docs > docs/config.md"
