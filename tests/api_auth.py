"""How tests call the control API the way a real client does: with the home's bearer token.

The daemon (or `make_app`) writes `<data>/api.token` at first start; `samctl` reads it from the
home and sends `Authorization: Bearer <token>`. Tests do the same through `auth_headers`.
"""

from __future__ import annotations

from pathlib import Path

from sam_brain.control.apitoken import read_token


def auth_headers(data: Path) -> dict[str, str]:
    """`Authorization` for the home whose data directory is `data` (its token must exist)."""
    token = read_token(data)
    assert token, f"no API token under {data}: start the daemon or build the app first"
    return {"Authorization": f"Bearer {token}"}
