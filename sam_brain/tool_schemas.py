"""JSON schemas of the tools a sample calls, for the `tools=` argument of a chat template.

A tool-using runtime sends its tool definitions with every request, so a model trained without
them never sees the prompt it will be served with. Claude Code's built-in tools have a fixed table
here (names, a one-line description, parameter shapes, required keys and enums as observed in
real transcripts from 1.0.24 to 2.1.114); any other tool (MCP servers, new built-ins) gets a schema inferred from the argument
shapes the sample itself uses. A known tool called with a key the table lacks (a newer Claude Code
version) gets that key added, so every argument the sample shows is described.
"""

from __future__ import annotations

import json
from typing import Any

from sam_brain.protocols import Message

Schema = dict[str, Any]


def _obj(required: list[str], **props: Schema) -> Schema:
    return {"type": "object", "properties": props, "required": required}


# Parameter shapes only: every tool-calling sample carries this block as unsupervised context,
# so per-parameter prose would cost ~2x the tokens for names that already say what they are.
STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
STRINGS: Schema = {"type": "array", "items": STR}


def _enum(*values: str) -> Schema:
    return {"type": "string", "enum": list(values)}


_EDIT = _obj(["old_string", "new_string"], old_string=STR, new_string=STR, replace_all=BOOL)
_TODO = _obj(
    ["content", "status"],
    content=STR,
    status=_enum("pending", "in_progress", "completed"),
    activeForm=STR,
    id=STR,
    priority=_enum("high", "medium", "low"),
)
_AGENT = {"description": STR, "prompt": STR, "subagent_type": STR, "model": STR}
_SHELL = _obj(["shell_id"], shell_id=STR)

CLAUDE_CODE_TOOLS: dict[str, tuple[str, Schema]] = {
    "Bash": (
        "Run a shell command (timeout in ms).",
        _obj(["command"], command=STR, description=STR, timeout=INT, run_in_background=BOOL),
    ),
    "BashOutput": (
        "Read new output of a background shell.",
        _obj(["bash_id"], bash_id=STR, filter=STR),
    ),
    "KillShell": ("Stop a background shell.", _SHELL),
    "KillBash": ("Stop a background shell.", _SHELL),
    "Read": (
        "Read a file (absolute path), optionally from a line offset.",
        _obj(["file_path"], file_path=STR, offset=INT, limit=INT),
    ),
    "Write": (
        "Write a file (absolute path).",
        _obj(["file_path", "content"], file_path=STR, content=STR),
    ),
    "Edit": (
        "Replace exact text in a file (absolute path).",
        _obj(
            ["file_path", "old_string", "new_string"],
            file_path=STR,
            old_string=STR,
            new_string=STR,
            replace_all=BOOL,
        ),
    ),
    "MultiEdit": (
        "Apply several exact-text replacements to one file, in order.",
        _obj(["file_path", "edits"], file_path=STR, edits={"type": "array", "items": _EDIT}),
    ),
    "Glob": ("Find files by glob pattern.", _obj(["pattern"], pattern=STR, path=STR)),
    "Grep": (
        "Search file contents with a regular expression (ripgrep).",
        _obj(
            ["pattern"],
            pattern=STR,
            path=STR,
            glob=STR,
            type=STR,
            output_mode=_enum("content", "files_with_matches", "count"),
            **{"-i": BOOL, "-n": BOOL, "-A": INT, "-B": INT, "-C": INT},
            multiline=BOOL,
            head_limit=INT,
        ),
    ),
    "LS": ("List a directory (absolute path).", _obj(["path"], path=STR, ignore=STRINGS)),
    "Task": ("Launch a subagent to do a task on its own.", _obj(["prompt"], **_AGENT)),
    "Agent": (
        "Launch a subagent to do a task on its own.",
        _obj(["prompt"], **_AGENT, name=STR, isolation=STR),
    ),
    "TaskOutput": (
        "Read the output of a background task.",
        _obj(["task_id"], task_id=STR, block=BOOL, timeout=INT),
    ),
    "TodoWrite": (
        "Replace the session's todo list.",
        _obj(["todos"], todos={"type": "array", "items": _TODO}),
    ),
    "WebFetch": (
        "Fetch a URL and answer a prompt about it.",
        _obj(["url", "prompt"], url=STR, prompt=STR),
    ),
    "WebSearch": (
        "Search the web.",
        _obj(["query"], query=STR, allowed_domains=STRINGS, blocked_domains=STRINGS),
    ),
    "NotebookEdit": (
        "Replace, insert or delete a Jupyter notebook cell.",
        _obj(
            ["notebook_path", "new_source"],
            notebook_path=STR,
            new_source=STR,
            cell_id=STR,
            cell_type=_enum("code", "markdown"),
            edit_mode=_enum("replace", "insert", "delete"),
        ),
    ),
    "NotebookRead": (
        "Read a Jupyter notebook.",
        _obj(["notebook_path"], notebook_path=STR, cell_id=STR),
    ),
    "ExitPlanMode": ("Leave plan mode and present the plan.", _obj([], plan=STR)),
    "EnterPlanMode": ("Enter plan mode.", _obj([])),
    "AskUserQuestion": (
        "Ask the user multiple-choice questions.",
        _obj(["questions"], questions={"type": "array", "items": {"type": "object"}}),
    ),
    "Skill": ("Run a skill.", _obj(["skill"], skill=STR, args=STR)),
    "SlashCommand": ("Run a slash command.", _obj(["command"], command=STR)),
}


def call_arguments(call: dict[str, Any]) -> Any:
    """A call's arguments as an object: OpenAI-style JSON strings are parsed, objects kept.

    A string that is not JSON is returned as it is; the renderer refuses it by name.
    """
    fn = call.get("function", call)
    args = fn.get("arguments") if isinstance(fn, dict) else None
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return args
    return {} if args is None else args


def tool_definitions(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-style `{"type": "function", "function": {...}}` for each tool the messages call.

    In order of first use, so the same sample always renders the same `# Tools` block.
    """
    seen: dict[str, list[Any]] = {}
    for m in messages:
        for call in m.get("tool_calls") or ():
            fn = call.get("function", call)
            name = fn.get("name") if isinstance(fn, dict) else None
            if isinstance(name, str) and name:
                seen.setdefault(name, []).append(call_arguments(call))
    return [_definition(name, args) for name, args in seen.items()]


def _definition(name: str, examples: list[Any]) -> dict[str, Any]:
    objects = [a for a in examples if isinstance(a, dict)]
    known = CLAUDE_CODE_TOOLS.get(name)
    if known is not None:
        description, params = known
        params = json.loads(json.dumps(params))  # a copy: the table is shared
        extra = infer_schema(objects)["properties"]
        for key, schema in extra.items():
            params["properties"].setdefault(key, schema)
    else:
        description = _describe_unknown(name)
        params = infer_schema(objects)
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": params},
    }


def _describe_unknown(name: str) -> str:
    parts = name.split("__")
    if len(parts) >= 3 and parts[0] == "mcp":
        return f"Tool {'__'.join(parts[2:])} of the MCP server {parts[1]}."
    return f"Tool {name}."


_JSON_TYPES = ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"))


def infer_schema(objects: list[dict[str, Any]]) -> Schema:
    """An object schema covering every example: keys in all of them are required."""
    props: dict[str, list[Any]] = {}
    for obj in objects:
        for key, value in obj.items():
            props.setdefault(key, []).append(value)
    required = [k for k in props if all(k in o for o in objects)]
    return {
        "type": "object",
        "properties": {k: _value_schema(v) for k, v in props.items()},
        "required": required,
    }


def _value_schema(values: list[Any]) -> Schema:
    types: list[str] = []
    for v in values:
        t = _type_name(v)
        if t not in types:
            types.append(t)
    schema: Schema = {"type": types[0] if len(types) == 1 else types}
    if types == ["object"]:
        schema = infer_schema([v for v in values if isinstance(v, dict)])
    elif types == ["array"]:
        items = [x for v in values for x in v]
        if items:
            schema["items"] = _value_schema(items)
    return schema


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "string")
