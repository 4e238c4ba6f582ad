"""Load the config tree from TOML: type-check every key and report all problems at once.

`parse_config` walks the frozen dataclasses of `sam_brain.config` against a parsed TOML mapping,
collecting every unknown key, wrong type and out-of-range value with its dotted key, then raises
one `ConfigError`; `load_config` finds and reads the file (a missing default file means all
defaults).
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from sam_brain.config import (
    DEFAULT_TRAINING,
    Config,
    Profile,
    _builtin_profiles,
    default_config_path,
)
from sam_brain.errors import ConfigError


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_scalar(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    return False


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {type(value).__name__}")
            return None
        return _build(tp, value, key, problems)  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, got {type(value).__name__}")
            return None
        out = [_convert(v, item, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return out
    if origin is dict:
        _, vtp = typing.get_args(tp)
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a table, got {type(value).__name__}")
            return None
        return {k: _convert(v, vtp, f"{key}.{k}", problems) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported config type at {key}")
    if not _check_scalar(value, tp):
        problems.append(f"{key}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
        return None
    return float(value) if tp is float else value


def _build(
    cls: type, data: dict[str, Any], prefix: str, problems: list[str], base: Any = None
) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            problems.append(f"{where}: unknown key (valid: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        where = f"{prefix}.{f.name}" if prefix else f.name
        if cls is Config and f.name == "profiles":
            kwargs[f.name] = _profiles(data[f.name], where, problems)
        else:
            kwargs[f.name] = _convert(data[f.name], hints[f.name], where, problems)
    if problems:
        return None
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def _profiles(value: Any, key: str, problems: list[str]) -> dict[str, Profile]:
    """User profiles override built-in ones field by field, or define new ones."""
    profiles = _builtin_profiles()
    if not isinstance(value, dict):
        problems.append(f"{key}: expected a table of profiles")
        return profiles
    for name, body in value.items():
        if not isinstance(body, dict):
            problems.append(f"{key}.{name}: expected a table")
            continue
        sub: list[str] = []
        built = _build(Profile, body, f"{key}.{name}", sub, base=profiles.get(name))
        problems.extend(sub)
        if built is not None:
            profiles[name] = built
    return profiles


def _validate(cfg: Config, problems: list[str]) -> None:
    t = cfg.training
    if t.backend not in ("auto", "mlx", "cuda"):
        problems.append(f"training.backend: {t.backend!r} is not one of auto, mlx, cuda")
    if t.profile not in cfg.profiles:
        problems.append(
            f"training.profile: {t.profile!r} is not a profile (have: {', '.join(sorted(cfg.profiles))})"
        )
    if t.min_for_training < 1:
        problems.append("training.min_for_training: must be at least 1")
    if t.max_runs_per_day < 1:
        problems.append("training.max_runs_per_day: must be at least 1")
    if t.nightly_window:
        from sam_brain.schedule_window import parse_window

        try:
            parse_window(t.nightly_window)
        except ValueError as err:
            problems.append(f"training.nightly_window: {err}")
    _validate_remote(cfg, problems)
    if not 0 < cfg.api.port < 65536:
        problems.append(f"api.port: {cfg.api.port} is not a TCP port")
    split = cfg.pipeline.split
    if len(split) != 3 or any(s < 0 for s in split) or abs(sum(split) - 1.0) > 1e-6:
        problems.append("pipeline.split: must be three non-negative shares that sum to 1")
    if not 0.0 < cfg.pipeline.dedup_threshold <= 1.0:
        problems.append("pipeline.dedup_threshold: must be in (0, 1]")
    if cfg.pipeline.pool_keep_versions < 1 or cfg.pipeline.pool_keep_days < 0:
        problems.append("pipeline.pool_keep_versions/pool_keep_days: must be >= 1 / >= 0")
    steps = cfg.deployment.canary_steps
    if not steps or steps != sorted(set(steps)) or any(not 0 < x <= 100 for x in steps):
        problems.append("deployment.canary_steps: must be increasing percentages within 1..100")
    if not 0.0 <= cfg.deployment.gate_holdout_share < 1.0:
        problems.append("deployment.gate_holdout_share: must be in [0, 1)")
    if cfg.deployment.gate_min_rows < 1:
        problems.append("deployment.gate_min_rows: must be at least 1")
    if cfg.deployment.log_keep_days < 0:
        problems.append("deployment.log_keep_days: must be >= 0 (0 keeps all)")

    if cfg.deployment.gate_case_max_tokens < 1:
        problems.append("deployment.gate_case_max_tokens: must be at least 1")
    _validate_trainings(cfg, problems)
    for name, p in cfg.profiles.items():
        for fname in ("lora_rank", "batch_size", "grad_accum", "max_seq_length"):
            if getattr(p, fname) < 1:
                problems.append(f"profiles.{name}.{fname}: must be at least 1")
        if p.learning_rate <= 0:
            problems.append(f"profiles.{name}.learning_rate: must be positive")


def _validate_remote(cfg: Config, problems: list[str]) -> None:
    t, r = cfg.training, cfg.training.remote_resources
    if t.remote and not t.remote.startswith(("ray://", "http://", "https://")):
        problems.append(
            f"training.remote: {t.remote!r} is not a Ray address (ray://HOST:PORT or"
            " http://HOST:8265)"
        )
    if t.remote_fallback not in ("", "local"):
        problems.append(f'training.remote_fallback: {t.remote_fallback!r} is not "" or local')
    if r.workers < 1:
        problems.append("training.remote_resources.workers: must be at least 1")
    if r.gpus_per_worker < 0 or r.cpus_per_worker <= 0:
        problems.append(
            "training.remote_resources: gpus_per_worker must be >= 0, cpus_per_worker > 0"
        )
    if r.workers > 1 and t.backend == "mlx":
        problems.append("training.remote_resources.workers: more than 1 needs backend cuda")
    if t.remote_max_upload_mb <= 0 or t.remote_timeout_minutes <= 0:
        problems.append("training.remote_max_upload_mb/remote_timeout_minutes: must be positive")
    if t.remote and not t.remote_storage:
        problems.append("training.remote_storage: must name a folder on the cluster")


TRAINING_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
"""A training's name is part of a model id, a folder and an export file name."""


def _validate_trainings(cfg: Config, problems: list[str]) -> None:
    from sam_brain.protocols import SOURCES

    for name, t in cfg.trainings.items():
        key = f"trainings.{name}"
        if name in (DEFAULT_TRAINING, "brain", "base"):  # model ids sam, sam-brain, base are taken
            problems.append(f"{key}: {name!r} is reserved (the default's model ids); pick another")
        elif not TRAINING_NAME.fullmatch(name):
            problems.append(f"{key}: the name must be lowercase letters, digits, - or _ (<= 40)")
        bad = [s for s in t.sources if s not in SOURCES]
        if bad:
            problems.append(f"{key}.sources: {bad} not among {', '.join(SOURCES)}")
        bad = [k for k in t.kinds if k not in ("sft", "preference")]
        if bad:
            problems.append(f"{key}.kinds: {bad} not among sft, preference")
        if t.profile and t.profile not in cfg.profiles:
            problems.append(f"{key}.profile: {t.profile!r} is not a profile")
        if t.min_for_training < 0:
            problems.append(f"{key}.min_for_training: must be >= 0 (0: training.min_for_training)")


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Build a `Config` from a parsed TOML mapping; every problem is reported at once."""
    problems: list[str] = []
    cfg = _build(Config, data, "", problems)
    if cfg is None:
        raise ConfigError(source, problems)
    _validate(cfg, problems)
    if problems:
        raise ConfigError(source, problems)
    return typing.cast(Config, cfg)


def load_config(path: Path | str | None = None) -> Config:
    """Load the config file; a missing file at the default location means all defaults."""
    explicit = path is not None or bool(os.environ.get("SAM_BRAIN_CONFIG"))
    p = Path(path).expanduser() if path is not None else default_config_path()
    if not p.exists():
        if explicit:
            raise ConfigError(str(p), ["file does not exist"])
        return Config()
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(str(p), [f"not valid TOML: {err}"]) from err
    return parse_config(data, str(p))
