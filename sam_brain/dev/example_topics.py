"""Turn the example templates into the topics of one made-up coding session, deterministically.

A topic is one user turn of an example session (prompt, rounds of text and tool calls, answer,
optional thinking). Tasks, wordings and vocabulary come from `data/example_templates.txt`, whose
header explains the line markers; `_Project` fills them in for one made-up Python module and renders
each tool call (Read, Edit, Write, Bash, Grep, Task) with the content and `toolUseResult` a real
Claude Code 2.1.x file would hold, tracking the module's source so reads follow earlier edits.
`sam_brain.dev.examples` writes the topics out as transcript lines.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from importlib import resources
from typing import Any

Line = dict[str, Any]


@dataclass
class Call:
    """One tool call: its input, the tool_result content and the structured `toolUseResult`."""

    name: str
    input: Line
    content: Any
    result: Any
    is_error: bool = False
    subagent: Topic | None = None


@dataclass
class Topic:
    """One user turn: prompt, rounds of (text, tool calls), final answer, optional thinking."""

    prompt: str
    rounds: list[tuple[str, list[Call]]]
    answer: str
    thinking: str = ""


def _parse_templates(text: str) -> dict[str, list[tuple[str, str]]]:
    kinds: dict[str, list[tuple[str, str]]] = {}
    for raw in text.splitlines():
        if raw.startswith("## "):
            current = kinds.setdefault(raw[3:].strip(), [])
        elif raw.strip() and not raw.startswith("# "):
            current.append((raw[0], raw[2:]))
    return kinds


# Tasks, wordings and vocabulary live in a data file; its header explains the line markers.
TEMPLATES = (
    resources.files("sam_brain.dev")
    .joinpath("data/example_templates.txt")
    .read_text(encoding="utf-8")
)
KINDS = _parse_templates(TEMPLATES)
SLUG_WORDS = KINDS.pop("words:slug")[0][1]  # split at use: a few words for the three-word `slug`
MODULES = KINDS.pop("words:modules")[0][1]  # module:noun:field, split at use
FUNC_FORMS = tuple(KINDS.pop("words:func_forms")[0][1].split())
SOURCE = KINDS.pop("source")[0][1]


class _Project:
    """The made-up module a session works on; tracks its source so reads follow edits."""

    def __init__(self, rng: random.Random, cwd: str, branch: str) -> None:
        module, noun, fld = rng.choice(MODULES.split()).split(":")
        func = rng.choice(FUNC_FORMS).format(n=noun)
        self.rng, self.cwd, self.rel = rng, cwd, f"src/demo/{module}.py"
        self.vars: dict[str, str] = {"module": module, "noun": noun, "Noun": noun.title()}
        self.vars["field"] = fld
        self.vars.update(func=func, rel=self.rel, cwd=cwd, branch=branch)
        self.files = {self.rel: SOURCE.format(**self.vars).replace("\\n", "\n") + "\n"}

    def topic(self, kind: str) -> Topic:
        rng, lines = self.rng, KINDS[kind]
        if kind != "agent":  # the agent runs inside its parent's turn and shares its numbers
            self.vars.update(
                small=str(rng.randint(3, 9)),
                big=str(rng.randint(20, 120)),
                secs=str(rng.randint(10, 99)),
                msec=f"{rng.randint(40, 90) / 10:.1f}",
                sha="".join(rng.choice("0123456789abcdef") for _ in range(7)),
                new_name=rng.choice(("select", "keep", "only")) + "_{noun}s_with_{field}",
                msg=rng.choice(("Fix {func} edge cases", "Tidy up {module} helpers")),
            )
            self.vars.update((k, self.vars[k].format(**self.vars)) for k in ("new_name", "msg"))

        def fill(t: str) -> str:
            return t.format(**self.vars).replace("\\n", "\n")

        pick = [fill(t) for k, t in lines if k == ">"]
        topic = Topic(rng.choice(pick) if pick else "", [], "")
        for k, t in lines:
            if k == "~":
                topic.thinking = fill(t)
            elif k == "=":
                topic.answer = fill(t)
            elif k in "-+":
                topic.rounds.append((fill(t) if k == "-" else "", []))
            if k in "+&":
                topic.rounds[-1][1].append(self._call(*fill(t).split(" ", 1)))
        if kind == "first:rename":
            self.vars["func"] = self.vars["new_name"]
        return topic

    def _call(self, tool: str, arg: str = "") -> Call:
        cwd = self.cwd
        if tool == "read":
            rel = arg or self.rel
            text = self.files.get(rel) or self._stub(rel)
            lines = text.splitlines()
            numbered = "\n".join(f"{i:>6}\u2192{line}" for i, line in enumerate(lines, 1))
            file = {"filePath": f"{cwd}/{rel}", "content": text, "numLines": len(lines)}
            result: Line = {"type": "text", "file": file}
            result["file"] |= {"startLine": 1, "totalLines": len(lines)}
            return Call("Read", {"file_path": f"{cwd}/{rel}"}, numbered, result)
        if tool == "edit":
            rel, arg = arg[1:].split(" ", 1) if arg.startswith("@") else (self.rel, arg)
            old, new = arg.split(" => ", 1)
            return self._edit(f"{cwd}/{rel}", rel, old, new)
        if tool == "write":
            rel, text = arg.split(" => ", 1)
            self.files[rel] = text
            result = {"type": "create", "filePath": f"{cwd}/{rel}", "content": text}
            result |= {"structuredPatch": [], "originalFile": None}
            args = {"file_path": f"{cwd}/{rel}", "content": text}
            return Call("Write", args, f"File created successfully at: {cwd}/{rel}", result)
        if tool == "pytest":
            target, count = arg.rsplit(" ", 1)
            out = f"{'.' * int(count):<40} [100%]\n{count} passed in {self.rng.randint(8, 95) / 100:.2f}s"
            return self._call("bash", f"python -m pytest -q {target} || Run the tests || {out}")
        if tool in ("bash", "bash!"):
            cmd, desc, out = arg.split(" || ", 2)
            args = {"command": cmd, "description": desc}
            if tool == "bash!":
                out = f"Exit code 1\n{out}"
                return Call("Bash", args, out, f"Error: {out}", is_error=True)
            result = {"stdout": out, "stderr": "", "interrupted": False, "isImage": False}
            return Call("Bash", args, out, result | {"noOutputExpected": False})
        if tool == "grep":
            pattern, rels = arg.split(" || ")
            files = [f"{cwd}/{r}" for r in rels.split(", ")]
            result = {"mode": "files_with_matches", "filenames": files, "numFiles": len(files)}
            text = f"Found {len(files)} files\n" + "\n".join(files)
            return Call("Grep", {"pattern": pattern, "path": cwd}, text, result)
        desc, prompt = arg.split(" || ")
        args = {"description": desc, "subagent_type": "Explore", "prompt": prompt}
        return Call("Task", args, "", {}, subagent=self.topic("agent"))

    def _edit(self, path: str, rel: str, old: str, new: str) -> Call:
        original = self.files.get(rel) or self._stub(rel)
        start = original.index(old) if old in original else 0
        first = original[:start].count("\n")
        self.files[rel] = original.replace(old, new, 1)
        lo = max(0, first - 3)
        context = [" " + x for x in original.splitlines()[lo:first]]
        olds, news = old.rstrip("\n").split("\n"), new.rstrip("\n").split("\n")
        patch: Line = {"oldStart": lo + 1, "oldLines": len(context) + len(olds)}
        patch |= {"newStart": lo + 1, "newLines": len(context) + len(news)}
        patch["lines"] = context + ["-" + x for x in olds] + ["+" + x for x in news]
        result: Line = {"filePath": path, "oldString": old, "newString": new}
        result["originalFile"] = original
        result |= {"replaceAll": False, "structuredPatch": [patch], "userModified": False}
        args = {"file_path": path, "old_string": old, "new_string": new, "replace_all": False}
        return Call("Edit", args, f"The file {path} has been updated successfully.", result)

    def _stub(self, rel: str) -> str:
        """A plausible small caller file for paths the templates mention but never wrote."""
        m, f = self.vars["module"], self.vars["func"]
        text = f"from demo.{m} import {f}\n\n\ndef run(db):\n    return {f}(db.fetch_all({m!r}))\n"
        self.files[rel] = text
        return text


def plan_topics(rng: random.Random, cwd: str, branch: str, with_subagent: bool) -> list[Topic]:
    """Plan 2-5 turns: one opening task, then follow-ups (the subagent turn second when asked).

    Args:
        rng: The session's random source; the same state always gives the same topics.
        cwd: Working directory the tool calls refer to.
        branch: Git branch named in commit and CI topics.
        with_subagent: Make the second turn a `Task` call answered by the `## agent` template.

    Returns:
        The topics in turn order.
    """
    project = _Project(rng, cwd, branch)
    firsts = sorted(k for k in KINDS if k.startswith("first:"))
    follows = sorted(k for k in KINDS if k.startswith("follow:") and k != "follow:callers")
    qas = sorted(k for k in KINDS if k.startswith("qa:"))
    kinds = [rng.choice(firsts)] + (["follow:callers"] if with_subagent else [])
    extra = rng.sample([*follows, rng.choice(qas)], k=len(follows) + 1)
    kinds += extra[: max(0, rng.randint(2, 5) - len(kinds))]
    return [project.topic(k) for k in kinds]
