"""Named trainings: one adapter lineage per domain or CLI (`[trainings.NAME]`), by name.

The unnamed default training is called "sam" (`DEFAULT_TRAINING`): model id `sam`, today's config
keys, lineage files where they always were. A named training NAME is served as `sam-NAME`, keeps
its versions and runs under `<data>/trainings/NAME/`, and reads its base model, profile and
threshold from its table, falling back to `[training]` for what it leaves empty. Which samples
belong to which training is `sam_brain.pipeline.training_select`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sam_brain.config import DEFAULT_TRAINING, Config, NamedTraining
from sam_brain.errors import NotFound

MODEL_PREFIX = "sam-"


def names(config: Config) -> list[str]:
    """Every training of a config: the default first, then the named ones by name."""
    return [DEFAULT_TRAINING, *sorted(config.trainings)]


def model_id(name: str) -> str:
    """The chat model id that serves a training's active version."""
    return DEFAULT_TRAINING if name == DEFAULT_TRAINING else MODEL_PREFIX + name


def training_of_model(config: Config, model: str) -> str:
    """The training a chat request's `model` names: "sam" or "sam-NAME".

    Raises:
        NotFound: `model` names no configured training.
    """
    if model == DEFAULT_TRAINING:
        return DEFAULT_TRAINING
    name = model.removeprefix(MODEL_PREFIX)
    if model.startswith(MODEL_PREFIX) and name in config.trainings:
        return name
    known = ", ".join(model_id(n) for n in names(config))
    raise NotFound(f"no model {model!r} (served: {known})")


def check_name(config: Config, name: str) -> str:
    """`name` when it is a training of this config.

    Raises:
        NotFound: No such training.
    """
    if name == DEFAULT_TRAINING or name in config.trainings:
        return name
    raise NotFound(f"no training {name!r} (configured: {', '.join(names(config))})")


def rules(config: Config, name: str) -> NamedTraining | None:
    """A named training's table; None for the default (which has no selection rules)."""
    return None if name == DEFAULT_TRAINING else config.trainings[name]


def scoped_config(config: Config, name: str) -> Config:
    """The config as `name`'s lineage sees it: its base models, profile and threshold in
    `[training]` and its gate cases in `deployment.gate_cases`, so the training machinery and
    the gate need no notion of names."""
    t = rules(config, name)
    if t is None:
        return config
    training = config.training
    scoped = dataclasses.replace(
        training,
        mlx_base_model=t.mlx_base_model or training.mlx_base_model,
        cuda_base_model=t.cuda_base_model or training.cuda_base_model,
        profile=t.profile or training.profile,
        min_for_training=t.min_for_training or training.min_for_training,
    )
    # The gate reads `deployment.gate_cases`: in a named training's view, its own case files.
    deployment = dataclasses.replace(config.deployment, gate_cases=list(t.gate_cases))
    return dataclasses.replace(config, training=scoped, deployment=deployment)


def lineage_dir(data: Path, name: str) -> Path:
    """Where a training's versions/ and runs/ live: the data folder itself for the default."""
    return data if name == DEFAULT_TRAINING else data / "trainings" / name
