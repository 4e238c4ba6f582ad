"""The clitron-style schema: loading, every validation rule, and near-duplicates dropped by the
pool's dedup when generated examples repeat across requests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sam_brain.dev.teacher_wire import Wire, serve
from sam_brain.errors import BadRequest
from sam_brain.protocols import TeacherReply, TeacherRequest
from sam_brain.teach.generate import outcome, requests_for
from sam_brain.teach.jobs import JobSpec, json_array
from sam_brain.teach.runner import run_job
from sam_brain.teach.schema import check_example, load_schema
from tests.teach.scripted import open_home

GH = """
cli_name: gh
description: GitHub CLI
commands:
  - name: pr
    subcommands:
      - name: list
        description: List pull requests
        args:
          - {name: state, type: enum, values: [open, closed, merged, all]}
          - {name: limit, type: integer}
          - {name: repo, type: string, required: true}
          - {name: draft, type: boolean}
          - {name: ratio, type: number}
        flags:
          - {name: web, short: w}
  - name: status
"""


@pytest.fixture
def gh(tmp_path: Path) -> Any:
    path = tmp_path / "gh.yaml"
    path.write_text(GH)
    return load_schema(str(path))


def ex(out: dict[str, Any], text: str = "show prs") -> dict[str, Any]:
    return {"input": text, "output": out}


PR = {"command": "pr", "subcommand": "list"}


@pytest.mark.parametrize(
    ("example", "reason"),
    [
        (ex({**PR, "args": {"repo": "cli/cli", "state": "open", "limit": 5}}), None),
        (ex({**PR, "args": {"repo": "a/b", "draft": True, "ratio": 0.5}, "flags": ["web"]}), None),
        (ex({"command": "status"}), None),
        ("a string", "not_an_object"),
        ({"input": "", "output": {"command": "status"}}, "bad_shape"),
        (ex({"command": "issue"}), "unknown_command"),
        (ex({"command": "pr", "subcommand": "merge"}), "unknown_subcommand"),
        (ex({"command": "pr"}), "unknown_subcommand"),
        (ex({"command": "status", "subcommand": "x"}), "unknown_subcommand"),
        (ex({**PR, "args": {"repo": "a/b", "color": "red"}}), "unknown_argument"),
        (ex({**PR, "args": {"repo": "a/b", "limit": "5"}}), "bad_argument_type"),
        (ex({**PR, "args": {"repo": "a/b", "limit": True}}), "bad_argument_type"),
        (ex({**PR, "args": {"repo": "a/b", "state": "draft"}}), "bad_argument_type"),
        (ex({**PR, "args": {"repo": "a/b", "draft": "yes"}}), "bad_argument_type"),
        (ex({**PR, "args": {"repo": 7}}), "bad_argument_type"),
        (ex({**PR, "args": {"state": "open"}}), "missing_required"),
        (ex({**PR, "args": {"repo": "a/b"}, "flags": ["json"]}), "unknown_flag"),
        (ex({**PR, "args": [], "flags": []}), "bad_shape"),
    ],
)
def test_check_example(gh: Any, example: Any, reason: str | None) -> None:
    assert check_example(gh, example) == reason


def test_schema_errors_are_one_line(tmp_path: Path) -> None:
    for text, fragment in [
        ("commands: [", "not valid YAML"),
        ("cli_name: x\n", "non-empty 'commands'"),
        ("commands: [{description: no name}]", "needs a 'name'"),
        ("commands: [{name: a, args: [{name: s, type: enum}]}]", "an enum needs 'values'"),
    ]:
        path = tmp_path / "s.yaml"
        path.write_text(text)
        with pytest.raises(BadRequest) as err:
            load_schema(str(path))
        assert fragment in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(BadRequest, match="no such file"):
        load_schema(str(tmp_path / "missing.yaml"))


def test_json_array_tolerates_fences_and_prose() -> None:
    assert json_array('Sure!\n```json\n[{"a": 1}]\n```\nDone.') == [{"a": 1}]
    assert json_array("no json here") is None
    assert json_array("[not, json]") is None


def test_requests_cycle_through_leaf_commands_and_share_the_cached_system(gh: Any) -> None:
    reqs = requests_for(gh, count=25, batch=10)
    assert [r.key for r in reqs] == ["b00000", "b00001", "b00002"]
    assert "Write 10" in reqs[0].messages[0]["content"]
    assert "Write 5" in reqs[2].messages[0]["content"]
    assert "`pr list`" in reqs[0].messages[0]["content"]
    assert "`status`" in reqs[1].messages[0]["content"]
    assert len({r.system for r in reqs}) == 1 and "repo" in reqs[0].system


def test_outcome_drops_repeats_within_an_answer(gh: Any) -> None:
    same = ex({"command": "status"}, "what is my status")
    reply = TeacherReply(text=json.dumps([same, same, ex({"command": "x"})]), model="m")
    out = outcome("job", gh, "", TeacherRequest(messages=[], key="b0"), reply)
    assert dict(out.counts) == {"parsed": 1, "valid": 1, "repeated_input": 1, "unknown_command": 1}
    system, user, answer = out.samples[0].messages
    assert system == {"role": "system", "content": gh.system_prompt()}
    assert "`gh`" in system["content"] and user["content"] == "what is my status"
    assert answer["content"] == '{"command":"status"}'
    assert "training" not in out.samples[0].meta


def test_near_duplicates_across_requests_go_through_the_pool_dedup(tmp_path: Path) -> None:
    def same_every_time(body: dict[str, Any]) -> str:
        return json.dumps(
            [
                ex({"command": "history", "args": {"limit": 5}}, "show me the last five events"),
                ex({"command": "status", "args": {}}, "is the sam brain daemon running right now"),
            ]
        )

    with serve(Wire(same_every_time)) as wire:
        home = open_home(tmp_path, provider="openai", base_url=wire.url + "/v1")
        spec = JobSpec(kind="generate", source="samctl", count=6, options={"batch_size": 2})
        status = run_job(home, spec)
    assert status.state == "done"
    assert status.counts["valid"] == 6
    assert status.stored == 2 and status.counts["duplicate"] == 4
    assert len(list(home.pool.samples())) == 2
