"""The API token: generated once into the home, read by the daemon and by `samctl`.

Stdlib only (samctl imports it). The token lives in `<data>/api.token`, mode 0600, written
atomically at the daemon's first start; a token file that other users can read, that is empty or
that is a symlink is refused rather than used, since anyone holding the token drives the API.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import stat
from pathlib import Path

from sam_brain.errors import ConfigError
from sam_brain.fsutil import atomic_file

TOKEN_FILE = "api.token"
MIN_TOKEN_CHARS = 32
WILDCARD_BINDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def token_path(data: Path) -> Path:
    return data / TOKEN_FILE


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1); a wildcard bind is not."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def read_secret_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a secret file that only its owner can read.

    Raises:
        ConfigError: The file is missing, a symlink, not a regular file or readable by others.
    """
    try:
        st = os.lstat(path)
    except OSError as err:
        raise ConfigError(str(path), [f"cannot read it ({err.strerror})"]) from err
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(str(path), ["is not a regular file (symlinks are refused)"])
    if st.st_mode & 0o077:
        raise ConfigError(
            str(path),
            [f"is readable by other users (mode {st.st_mode & 0o777:04o}); chmod 600 it"],
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def ensure_token(data: Path) -> str:
    """The home's API token, generated (mode 0600, atomically) when there is none yet.

    Raises:
        ConfigError: The token file exists but is unusable (others can read it, too short).
    """
    path = token_path(data)
    if not os.path.lexists(path):
        data.mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        with atomic_file(path) as tmp:
            os.chmod(tmp, 0o600)  # before the secret is written: never readable by others
            tmp.write_text(token + "\n", encoding="utf-8")
        return token
    lines = read_secret_lines(path)
    token = lines[0] if len(lines) == 1 else ""
    if len(token) < MIN_TOKEN_CHARS or not token.isascii() or not token.isprintable():
        raise ConfigError(
            str(path),
            [
                f"holds no usable API token (one line of at least {MIN_TOKEN_CHARS} characters);"
                " delete it and restart the daemon for a new one"
            ],
        )
    return token


def read_token(data: Path) -> str | None:
    """The token for a client (samctl), or None when the daemon has not made one yet."""
    try:
        return ensure_token(data) if os.path.lexists(token_path(data)) else None
    except (ConfigError, OSError):
        return None
