"""The service samples run the console script that pyproject installs."""

from __future__ import annotations

import configparser
import plistlib
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def scripts() -> dict[str, str]:
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return dict(data["project"]["scripts"])


def test_systemd_unit_runs_sam_brain_serve() -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "systemd" / "sam-brain.service")
    exec_start = parser["Service"]["ExecStart"].split()
    assert Path(exec_start[0]).name in scripts()
    assert scripts()[Path(exec_start[0]).name] == "sam_brain.control.daemon:main"
    assert exec_start[1:] == ["serve"]
    assert parser["Service"]["Restart"] == "on-failure"
    assert int(parser["Service"]["Nice"]) > 0


def test_launchd_plist_runs_sam_brain_serve() -> None:
    with open(REPO / "launchd" / "com.sam-brain.daemon.plist", "rb") as fh:
        plist = plistlib.load(fh)
    args = plist["ProgramArguments"]
    assert (
        Path(args[0]).name == "sam-brain"
        and scripts()["sam-brain"] == "sam_brain.control.daemon:main"
    )
    assert args[1:] == ["serve"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["Label"] == "com.sam-brain.daemon"


def test_both_services_have_a_readme() -> None:
    for d in ("systemd", "launchd"):
        assert "sam-brain" in (REPO / d / "README.md").read_text()
