"""JSON schemas of the tools a sample calls, for the `tools=` argument of a chat template.

A tool-using runtime sends its tool definitions with every request, so a model trained without
them never sees the prompt it will be served with. Claude Code's built-in tools have a fixed table
here (names, a one-line description, parameter shapes as observed in real transcripts from 1.0.24
to 2.1.114); any other tool (MCP servers, new built-ins) gets a schema inferred from the argument
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


def _s(description: str, **extra: Any) -> Schema:
    return {"type": "string", "description": description, **extra}


def _i(description: str) -> Schema:
    return {"type": "integer", "description": description}


def _b(description: str) -> Schema:
    return {"type": "boolean", "description": description}


_EDIT = _obj(
    ["old_string", "new_string"],
    old_string=_s("Exact text to replace."),
    new_string=_s("Text to replace it with."),
    replace_all=_b("Replace every occurrence (default false)."),
)
_TODO = _obj(
    ["content", "status"],
    content=_s("What to do."),
    status=_s("State of the item.", enum=["pending", "in_progress", "completed"]),
    activeForm=_s("The item in present continuous form, shown while it runs."),
    id=_s("Item id (older versions)."),
    priority=_s("Priority (older versions).", enum=["high", "medium", "low"]),
)
_AGENT = {
    "description": _s("Short (3-5 word) description of the task."),
    "prompt": _s("The task for the agent to perform."),
    "subagent_type": _s("The kind of agent to use."),
    "model": _s("Model for the agent (optional)."),
}

CLAUDE_CODE_TOOLS: dict[str, tuple[str, Schema]] = {
    "Bash": (
        "Run a shell command in a persistent shell session.",
        _obj(
            ["command"],
            command=_s("The command to run."),
            description=_s("What the command does, in 5-10 words."),
            timeout=_i("Timeout in milliseconds (max 600000)."),
            run_in_background=_b("Run in the background and read its output later."),
        ),
    ),
    "BashOutput": (
        "Read new output of a background shell.",
        _obj(["bash_id"], bash_id=_s("Id of the background shell."), filter=_s("Regex filter.")),
    ),
    "KillShell": (
        "Stop a background shell.",
        _obj(["shell_id"], shell_id=_s("Id of the background shell.")),
    ),
    "KillBash": (
        "Stop a background shell (older name of KillShell).",
        _obj(["shell_id"], shell_id=_s("Id of the background shell.")),
    ),
    "Read": (
        "Read a file from the local filesystem.",
        _obj(
            ["file_path"],
            file_path=_s("Absolute path of the file."),
            offset=_i("Line to start reading from."),
            limit=_i("Number of lines to read."),
        ),
    ),
    "Write": (
        "Write a file to the local filesystem, replacing it if it exists.",
        _obj(
            ["file_path", "content"],
            file_path=_s("Absolute path of the file."),
            content=_s("The content to write."),
        ),
    ),
    "Edit": (
        "Replace exact text in a file.",
        {
            **_EDIT,
            "properties": {"file_path": _s("Absolute path of the file."), **_EDIT["properties"]},
            "required": ["file_path", "old_string", "new_string"],
        },
    ),
    "MultiEdit": (
        "Make several exact-text replacements in one file, in order.",
        _obj(
            ["file_path", "edits"],
            file_path=_s("Absolute path of the file."),
            edits={"type": "array", "items": _EDIT, "description": "Edits to apply in order."},
        ),
    ),
    "Glob": (
        "Find files by glob pattern.",
        _obj(
            ["pattern"],
            pattern=_s("Glob pattern, e.g. **/*.py."),
            path=_s("Directory to search (default: the working directory)."),
        ),
    ),
    "Grep": (
        "Search file contents with a regular expression (ripgrep).",
        _obj(
            ["pattern"],
            pattern=_s("Regular expression."),
            path=_s("File or directory to search."),
            glob=_s("Glob filter for files."),
            type=_s("File type filter, e.g. py."),
            output_mode=_s("What to show.", enum=["content", "files_with_matches", "count"]),
            **{"-i": _b("Case insensitive."), "-n": _b("Show line numbers.")},
            **{"-A": _i("Lines after."), "-B": _i("Lines before."), "-C": _i("Context lines.")},
            multiline=_b("Let patterns span lines."),
            head_limit=_i("Show only the first N results."),
        ),
    ),
    "LS": (
        "List a directory.",
        _obj(
            ["path"],
            path=_s("Absolute path of the directory."),
            ignore={"type": "array", "items": {"type": "string"}, "description": "Globs to skip."},
        ),
    ),
    "Task": ("Launch a subagent to handle a task on its own.", _obj(["prompt"], **_AGENT)),
    "Agent": (
        "Launch a subagent to handle a task on its own.",
        _obj(
            ["prompt"],
            **_AGENT,
            name=_s("Name of the agent."),
            isolation=_s("Isolation mode, e.g. worktree."),
        ),
    ),
    "TaskOutput": (
        "Read the output of a background task.",
        _obj(
            ["task_id"],
            task_id=_s("Id of the task."),
            block=_b("Wait for the task to finish."),
            timeout=_i("Timeout in milliseconds."),
        ),
    ),
    "TodoWrite": (
        "Create and update the session's todo list.",
        _obj(["todos"], todos={"type": "array", "items": _TODO, "description": "The whole list."}),
    ),
    "WebFetch": (
        "Fetch a URL and answer a prompt about its content.",
        _obj(["url", "prompt"], url=_s("The URL."), prompt=_s("What to extract.")),
    ),
    "WebSearch": (
        "Search the web.",
        _obj(
            ["query"],
            query=_s("The search query."),
            allowed_domains={"type": "array", "items": {"type": "string"}},
            blocked_domains={"type": "array", "items": {"type": "string"}},
        ),
    ),
    "NotebookEdit": (
        "Replace, insert or delete a cell of a Jupyter notebook.",
        _obj(
            ["notebook_path", "new_source"],
            notebook_path=_s("Absolute path of the notebook."),
            new_source=_s("New source of the cell."),
            cell_id=_s("Id of the cell."),
            cell_type=_s("Cell type.", enum=["code", "markdown"]),
            edit_mode=_s("Edit kind.", enum=["replace", "insert", "delete"]),
        ),
    ),
    "NotebookRead": (
        "Read a Jupyter notebook.",
        _obj(["notebook_path"], notebook_path=_s("Absolute path."), cell_id=_s("Id of a cell.")),
    ),
    "ExitPlanMode": (
        "Leave plan mode and present the plan for approval.",
        _obj([], plan=_s("The plan, in markdown.")),
    ),
    "EnterPlanMode": ("Enter plan mode.", _obj([])),
    "AskUserQuestion": (
        "Ask the user multiple-choice questions.",
        _obj(["questions"], questions={"type": "array", "items": {"type": "object"}}),
    ),
    "Skill": ("Run a skill.", _obj(["skill"], skill=_s("Skill name."), args=_s("Arguments."))),
    "SlashCommand": ("Run a slash command.", _obj(["command"], command=_s("The command line."))),
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
