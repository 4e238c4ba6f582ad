"""What both teachers share: the API key, read from the environment only."""

from __future__ import annotations

import os

from sam_brain.config import TeacherConfig
from sam_brain.errors import TeacherError


def api_key(config: TeacherConfig, default_env: str, *, required: bool) -> str:
    """The key from the environment only (config files must not hold keys).

    Raises:
        TeacherError: `required` and the variable is unset; the message names the variable.
    """
    env = config.api_key_env or default_env
    key = os.environ.get(env, "").strip()
    if not key and required:
        raise TeacherError(f"teacher {config.provider!r}: set the API key in ${env}")
    return key
