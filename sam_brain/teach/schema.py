"""A clitron-style CLI schema (YAML) and the checks a generated example must pass.

    cli_name: gh
    description: GitHub CLI
    commands:
      - name: pr
        subcommands:
          - name: list
            args:
              - {name: state, type: enum, values: [open, closed], default: open}
              - {name: limit, type: integer}
              - {name: repo, type: string, required: true}
            flags:
              - {name: web, short: w}
            examples:
              - {input: "show me open prs in cli/cli", output: {...}}

An example is `{"input": "...", "output": {"command", "subcommand"?, "args": {}, "flags": []}}`.
Argument types: string, path, integer, number, boolean, enum (with `values`), list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sam_brain.errors import BadRequest

TYPES = ("string", "path", "integer", "number", "boolean", "enum", "list")


@dataclass
class Arg:
    name: str
    type: str = "string"
    required: bool = False
    values: list[Any] = field(default_factory=list)


@dataclass
class Command:
    """A command or a subcommand: its path (`["pr", "list"]`), arguments, flags and examples."""

    path: list[str]
    description: str = ""
    args: dict[str, Arg] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)
    subcommands: dict[str, Command] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class CliSchema:
    name: str  # the schema file's stem: what `meta["schema"]` holds
    cli_name: str
    description: str
    commands: dict[str, Command]
    text: str  # the YAML as written, sent to the teacher

    def leaves(self) -> list[Command]:
        """Every command that takes no subcommand, in file order (one campaign focus each)."""
        out: list[Command] = []
        todo = list(self.commands.values())
        while todo:
            c = todo.pop(0)
            if c.subcommands:
                todo[:0] = list(c.subcommands.values())
            else:
                out.append(c)
        return out

    def system_prompt(self) -> str:
        """The system message of every generated sample, and what a client sends to use them.

        It makes the behaviour conditional: without it a general assistant trained on these
        samples would start answering ordinary requests with this CLI's JSON commands.
        """
        return (
            f"Turn the request into one `{self.cli_name}` command ({self.description}). Answer"
            ' with JSON only: {"command", "subcommand", "args", "flags"}.'
        )

    def examples(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        todo = list(self.commands.values())
        while todo:
            c = todo.pop(0)
            out.extend(c.examples)
            todo.extend(c.subcommands.values())
        return out


def _bad(where: str, what: str) -> BadRequest:
    return BadRequest(f"schema {where}: {what}")


def _command(raw: Any, parent: list[str], where: str) -> Command:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise _bad(where, f"command under {' '.join(parent) or 'the top'} needs a 'name'")
    path = [*parent, raw["name"]]
    cmd = Command(path=path, description=str(raw.get("description") or ""))
    for a in raw.get("args") or []:
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise _bad(where, f"{' '.join(path)}: every arg needs a 'name'")
        kind = str(a.get("type") or "string")
        if kind not in TYPES:
            raise _bad(where, f"{' '.join(path)} --{a['name']}: unknown type {kind!r}")
        values = list(a.get("values") or [])
        if kind == "enum" and not values:
            raise _bad(where, f"{' '.join(path)} --{a['name']}: an enum needs 'values'")
        cmd.args[a["name"]] = Arg(a["name"], kind, bool(a.get("required", False)), values)
    for f in raw.get("flags") or []:
        name = f.get("name") if isinstance(f, dict) else f
        if not isinstance(name, str):
            raise _bad(where, f"{' '.join(path)}: every flag needs a 'name'")
        cmd.flags.add(name)
    for sub in raw.get("subcommands") or []:
        child = _command(sub, path, where)
        cmd.subcommands[child.path[-1]] = child
    cmd.examples = [e for e in raw.get("examples") or [] if isinstance(e, dict)]
    return cmd


def load_schema(source: str) -> CliSchema:
    """A schema from a file, or a packaged one by name (`samctl`).

    Raises:
        BadRequest: The file is missing, not YAML, or not a schema (the message says where).
    """
    path = Path(source).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        packaged = resources.files("sam_brain.teach") / "schemas" / f"{source}.yaml"
        if not packaged.is_file():
            raise BadRequest(f"schema {source}: no such file (or packaged schema name)")
        text = packaged.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise _bad(source, f"not valid YAML ({str(err).splitlines()[0]})") from None
    if (
        not isinstance(raw, dict)
        or not isinstance(raw.get("commands"), list)
        or not raw["commands"]
    ):
        raise _bad(source, "needs a non-empty 'commands' list")
    commands = {}
    for c in raw["commands"]:
        cmd = _command(c, [], source)
        commands[cmd.path[0]] = cmd
    return CliSchema(
        name=path.stem if path.suffix else source,
        cli_name=str(raw.get("cli_name") or path.stem),
        description=str(raw.get("description") or ""),
        commands=commands,
        text=text,
    )


def _type_ok(arg: Arg, value: Any) -> bool:
    if arg.type in ("string", "path"):
        return isinstance(value, str) and bool(value.strip())
    if arg.type == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if arg.type == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if arg.type == "boolean":
        return isinstance(value, bool)
    if arg.type == "enum":
        return value in arg.values
    return isinstance(value, list)  # list


def check_example(schema: CliSchema, example: Any) -> str | None:
    """None when `example` is a valid example of `schema`, else the drop reason."""
    if not isinstance(example, dict):
        return "not_an_object"
    text, out = example.get("input"), example.get("output")
    if not isinstance(text, str) or not text.strip() or not isinstance(out, dict):
        return "bad_shape"
    cmd = schema.commands.get(str(out.get("command")))
    if cmd is None:
        return "unknown_command"
    sub = out.get("subcommand")
    if cmd.subcommands:
        cmd = cmd.subcommands.get(str(sub))  # type: ignore[assignment]
        if cmd is None:
            return "unknown_subcommand"
    elif sub not in (None, ""):
        return "unknown_subcommand"
    args = out.get("args", {})
    flags = out.get("flags", [])
    if not isinstance(args, dict) or not isinstance(flags, list):
        return "bad_shape"
    for name, value in args.items():
        arg = cmd.args.get(name)
        if arg is None:
            return "unknown_argument"
        if not _type_ok(arg, value):
            return "bad_argument_type"
    if any(a.required and a.name not in args for a in cmd.args.values()):
        return "missing_required"
    if any(not isinstance(f, str) or f not in cmd.flags for f in flags):
        return "unknown_flag"
    return None


def canonical(output: dict[str, Any]) -> str:
    """The answer a trained model should give: compact JSON, keys sorted."""
    return json.dumps(output, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
