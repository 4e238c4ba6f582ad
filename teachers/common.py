"""What both teachers share: the API key, read from the environment only."""

from __future__ import annotations

import os
import re

from sam_brain.config import TeacherConfig
from sam_brain.errors import TeacherError

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def api_key(config: TeacherConfig, default_env: str, *, required: bool) -> str:
    """The key from the environment only (config files must not hold keys).

    Raises:
        TeacherError: `required` and the variable is unset (the message names the variable), or
            `api_key_env` is not a variable name (a pasted key: the message does not repeat it).
    """
    env = config.api_key_env or default_env
    if not ENV_NAME.match(env):
        # Someone pasted the key itself here: say so without repeating it anywhere.
        raise TeacherError(
            "teacher.api_key_env must name an environment variable (e.g. ANTHROPIC_API_KEY),"
            " not hold the key; move the key into that variable"
        )
    key = os.environ.get(env, "").strip()
    if not key and required:
        raise TeacherError(f"teacher {config.provider!r}: set the API key in ${env}")
    return key
