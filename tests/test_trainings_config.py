"""`[trainings.NAME]`: loaded with every problem at once; a training's view of the config."""

from __future__ import annotations

import pytest

from sam_brain.config_load import parse_config
from sam_brain.errors import ConfigError, NotFound
from sam_brain.trainings import model_id, names, scoped_config, training_of_model


def test_every_problem_of_the_trainings_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "trainings": {
                    "Bad Name": {"sources": ["mail"], "kinds": ["dpo"], "profile": "nope"},
                    "brain": {},
                    "gh": {"min_for_training": -1},
                }
            }
        )
    text = str(err.value)
    for expected in (
        "trainings.Bad Name: the name must be lowercase",
        "trainings.Bad Name.sources: ['mail'] not among",
        "trainings.Bad Name.kinds: ['dpo'] not among sft, preference",
        "trainings.Bad Name.profile: 'nope' is not a profile",
        "trainings.brain: 'brain' is reserved",
        "trainings.gh.min_for_training: must be >= 0",
    ):
        assert expected in text, text
    # Keys and types are checked first (as for every table), every one of them at once.
    with pytest.raises(ConfigError, match=r"trainings.gh.colour: unknown key.*trainings.gh.kinds"):
        parse_config({"trainings": {"gh": {"colour": "blue", "kinds": "sft"}}})


def test_a_training_sees_its_own_settings_and_falls_back_to_training() -> None:
    cfg = parse_config(
        {
            "training": {"mlx_base_model": "base-a", "min_for_training": 50, "profile": "full"},
            "deployment": {"gate_cases": ["default.jsonl"]},
            "trainings": {
                "gh": {"mlx_base_model": "base-b", "gate_cases": ["gh.jsonl"], "profile": "8gb"},
                "docs": {"min_for_training": 5},
            },
        }
    )
    assert names(cfg) == ["sam", "docs", "gh"]
    gh, docs = scoped_config(cfg, "gh"), scoped_config(cfg, "docs")
    assert (gh.training.mlx_base_model, gh.training.profile, gh.training.min_for_training) == (
        "base-b",
        "8gb",
        50,
    )
    assert gh.deployment.gate_cases == ["gh.jsonl"] and docs.deployment.gate_cases == []
    assert (docs.training.mlx_base_model, docs.training.min_for_training) == ("base-a", 5)
    assert scoped_config(cfg, "sam") is cfg
    assert [model_id(n) for n in names(cfg)] == ["sam", "sam-docs", "sam-gh"]
    assert training_of_model(cfg, "sam-gh") == "gh" and training_of_model(cfg, "sam") == "sam"
    with pytest.raises(NotFound, match="served: sam, sam-docs, sam-gh"):
        training_of_model(cfg, "sam-nope")
