"""What every samctl command shares: the daemon's HTTP client, opening a home, printing documents.

Stdlib only, so `samctl` starts fast; cli.py and cli_deploy.py both import it, not each other.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from sam_brain import errors
from sam_brain.config import Config, data_dir
from sam_brain.control.apitoken import read_token
from sam_brain.errors import DaemonUnreachable, SamBrainError
from sam_brain.home import Home


class Client:
    """A tiny JSON-over-HTTP client for the daemon (stdlib only: samctl starts fast)."""

    def __init__(self, url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token

    @classmethod
    def for_config(cls, url: str, config: Config, timeout: float = 30.0) -> Client:
        """A client that sends the home's API token (`<data>/api.token`) as a bearer token."""
        return cls(url, timeout, token=read_token(data_dir(config)))

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            try:
                payload = json.loads(err.read() or b"null")
            except json.JSONDecodeError:
                payload = {"error": err.reason}
            return err.code, payload
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            raise DaemonUnreachable(
                f"no daemon answers at {self.url} ({err}); start it with `sam-brain serve`"
            ) from err


def open_home(config: Config) -> Home:
    return Home.open(config)


def print_doc(doc: Any, as_json: bool) -> None:
    if as_json:
        print(json.dumps(doc, indent=2, default=str))
    elif isinstance(doc, dict):
        for k, v in doc.items():
            print(f"{k}: {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}")
    else:
        print(doc)


def error_from_http(code: int, doc: Any) -> SamBrainError:
    name = doc.get("type", "") if isinstance(doc, dict) else ""
    cls = getattr(errors, name, None)
    msg = doc.get("error", str(doc)) if isinstance(doc, dict) else str(doc)
    if isinstance(cls, type) and issubclass(cls, SamBrainError) and cls is not errors.ConfigError:
        return cls(msg)
    err = SamBrainError(f"daemon answered {code}: {msg}")
    return err
