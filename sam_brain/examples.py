"""Write example Claude Code transcripts in the real 2.1.x on-disk format, for demos and tests.

Sessions are generated deterministically from a seed: conversations about small coding tasks in a
made-up Python project, combined from the templates in `TEMPLATES` (task x module x function x
wording) so that sessions differ. The format follows real 2.1.39 files: one content block per
assistant line sharing `message.id`/`requestId`, `progress` hook lines inside the `parentUuid`
chain, `file-history-snapshot` lines, tool results with `toolUseResult`, a thinking block, parallel
tool calls that fork the tree, `turn_duration` system lines and, when asked, a `Task` subagent with
its nested `<session>/subagents/agent-<id>.jsonl` file. No secrets and no real personal data.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

Line = dict[str, Any]

VERSION = "2.1.39"
MODEL = "claude-opus-4-6"
AGENT_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_CWD = "/home/dev/demo-project"
DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SLUG_WORDS = (  # split at use: a few words for the three-word `slug`
    "humble quiet brisk lucky mellow tidy nimble sunny gentle witty dancing drifting humming "
    "sorting folding weaving baking sketching otter heron maple comet pebble lantern walrus meadow"
)
MODULES = (  # module:noun:field, split at use
    "inventory:item:quantity billing:invoice:amount reports:report:pages accounts:account:balance "
    "scheduler:job:priority search:hit:score notifications:message:retries exporter:row:size "
    "importer:record:version metrics:sample:value uploads:upload:bytes shipping:parcel:weight "
    "library:book:copies recipes:recipe:servings"
)
FUNC_FORMS = ("filter_{n}s", "active_{n}s", "keep_positive_{n}s", "visible_{n}s", "pending_{n}s")
HOOKS = {"Bash": "./scripts/guard.sh", "Edit": "ruff format", "Write": "./scripts/guard.sh"}
SOURCE = (
    r'"""{Noun} helpers for the {module} service."""\n\nimport os\n\n\n'
    r'def {func}(rows):\n    out = []\n    for row in rows:\n        if row["{field}"] > 0:\n'
    r"            out.append(row)\n    return out\n\n\ndef unique_{noun}_ids(rows):\n    seen = []\n"
    r'    for row in rows:\n        if row["id"] not in seen:\n            seen.append(row["id"])\n'
    r'    return seen\n\n\ndef {noun}_report_path(base):\n    return os.path.join(base, "reports", "{module}.csv")'
)

# Task templates, one line per item. `## first:*` opens a session, `## follow:*` continues it,
# `## qa:*` is a tool-free question. `>` prompt variants, `~` thinking, `-` new round with text,
# `+` new round with a tool call, `&` another call in the same message (parallel), `=` answer.
# Tools: read [rel] | edit [@rel] OLD => NEW | write rel => TEXT | bash[!] CMD || DESC || OUT |
# pytest TARGET COUNT | grep PATTERN || rel, rel | task DESC || PROMPT (runs `## agent`).
TEMPLATES = r"""
## first:keyerror
> test_{func} is failing with KeyError: '{field}', can you fix it?
> {func} blows up with a KeyError when a {noun} has no {field}. fix pls
> getting `KeyError: '{field}'` from {module}.{func} in the logs. make it tolerate {noun}s without a {field}
~ The KeyError on '{field}' most likely comes from {func} indexing the dict directly. Let me read {rel} before changing anything.
- I'll look at the function first.
& read
- `{func}` indexes `row["{field}"]` directly. I'll use `.get` with a default of 0.
& edit         if row["{field}"] > 0: =>         if row.get("{field}", 0) > 0:
+ pytest tests/test_{module}.py {small}
= Fixed. `{func}` now reads the field with `row.get("{field}", 0)`, so a {noun} without a `{field}` counts as 0 and is skipped instead of raising `KeyError`. The {module} tests pass ({small} passed).
## first:dedupe
> unique_{noun}_ids takes forever on big inputs (100k {noun}s). why?
> profiling shows unique_{noun}_ids as the hot spot in {module}, can you speed it up without changing the order of ids?
~ Quadratic dedupe through list membership. dict.fromkeys keeps the first-seen order, so the output stays identical.
+ read
- The loop checks membership in a list, which is O(n) per lookup, so the function is O(n^2) overall.
& edit     seen = []\n    for row in rows:\n        if row["id"] not in seen:\n            seen.append(row["id"])\n    return seen =>     # dict keeps insertion order and makes membership checks O(1)\n    return list(dict.fromkeys(row["id"] for row in rows))
+ bash python -m timeit -s "from demo.{module} import unique_{noun}_ids; rows=[{{'id': i % 5000}} for i in range(100000)]" "unique_{noun}_ids(rows)" || Time the new version || 20 loops, best of 5: {msec} msec per loop
= `unique_{noun}_ids` did `row["id"] not in seen` on a list, so every check scanned all ids seen so far: quadratic time. It now uses `dict.fromkeys`, which keeps the first-seen order and makes each check O(1). On 100k {noun}s it takes about {msec} ms.
## first:types
> add type hints to {rel}
> can you type-annotate {module}.py so mypy --strict is happy?
> mypy complains about missing annotations in the {module} module, please fix
+ read
+ edit def {func}(rows):\n    out = [] => def {func}(rows: list[Line]) -> list[Line]:\n    out: list[Line] = []
& edit import os\n => import os\nfrom typing import Any\n
+ bash mypy --strict {rel} || Type-check the module || Success: no issues found in 1 source file
= Done. `{func}` now takes and returns `list[Line]` (with `Any` imported from `typing`), and `mypy --strict {rel}` reports no issues. The other helpers needed no changes once the row type was known.
## first:logging
> add debug logging to {func} so I can see how many {noun}s get dropped
> I want {func} to log how many {noun}s it filtered out, at debug level
+ read
- I'll add a module logger and one debug line at the end of the function.
& edit import os\n => import logging\nimport os\n\nlog = logging.getLogger(__name__)\n
& edit             out.append(row)\n    return out =>             out.append(row)\n    log.debug("{func}: kept %d of %d {noun}s", len(out), len(rows))\n    return out
= Added a module-level `log = logging.getLogger(__name__)` and a debug line at the end of `{func}` that reports how many {noun}s were kept out of how many. It passes %-style arguments, so the message is only formatted when debug logging is on; enable it with `logging.basicConfig(level=logging.DEBUG)`.
## first:rename
> rename {func} to {new_name} everywhere
> {func} is a confusing name, call it {new_name} and update the callers
~ I need every reference before renaming: grep first, then edit each file.
+ grep {func} || {rel}, src/demo/cli_{module}.py, tests/test_{module}.py
- Three files use it. I'll update the definition and the CLI import first.
& edit def {func}(rows => def {new_name}(rows
& edit @src/demo/cli_{module}.py from demo.{module} import {func}\n => from demo.{module} import {new_name}\n
+ bash sed -i 's/{func}/{new_name}/g' tests/test_{module}.py && python -m pytest -q || Update the test and run the suite || {big} passed in 1.{secs}s
= Renamed `{func}` to `{new_name}` in the module, the CLI import and the tests; nothing else refers to the old name and the suite passes. If other repositories import it, keep the old name as a deprecated alias for one release.
## first:pathlib
> switch {module}.py from os.path to pathlib
> can {noun}_report_path return a Path instead of a string?
+ read
+ edit def {noun}_report_path(base):\n    return os.path.join(base, "reports", "{module}.csv") => def {noun}_report_path(base: str | Path) -> Path:\n    return Path(base) / "reports" / "{module}.csv"
& edit import os\n => from pathlib import Path\n
+ pytest . {big}
= `{noun}_report_path` now accepts a `str` or a `Path` and returns a `Path` built with `/`, and `import os` is gone because nothing else used it. Callers that put the result in f-strings keep working; any that call string methods on it need `str(...)`.
## first:test
> write a pytest test for {func}
> there's no test for {func} yet, add one that covers the edge cases
+ read
+ write tests/test_{module}_{field}.py => from demo.{module} import {func}\n\n\ndef test_{func}_keeps_positive_{field}():\n    rows = [{{"id": 1, "{field}": 3}}, {{"id": 2, "{field}": 0}}, {{"id": 3, "{field}": -1}}]\n    assert [r["id"] for r in {func}(rows)] == [1]\n\n\ndef test_{func}_empty():\n    assert {func}([]) == []\n
+ pytest tests/test_{module}_{field}.py 2
= Added `tests/test_{module}_{field}.py` with two tests: one checks that only {noun}s with a positive `{field}` are kept (zero and negative ones are dropped), the other that an empty list gives an empty list. Both pass.
## first:ci
> CI is red on {branch}, can you check what's failing?
> tests fail locally after my last pull, can you take a look?
~ Run the tests first to see the actual failure instead of guessing.
+ bash! python -m pytest -q -x || Run the suite and stop at the first failure || F.....\nFAILED tests/test_{module}.py::test_{func} - TypeError: '>' not supported between instances of 'NoneType' and 'int'\n1 failed, 5 passed
+ read
- Some {noun}s have `{field}: None`. I'll treat None like 0.
& edit         if row["{field}"] > 0: =>         if (row["{field}"] or 0) > 0:
+ pytest . {big}
= One test failed: `{func}` evaluated `None > 0` for {noun}s whose `{field}` is null, which the fixtures from the last pull contain. The check is now `(row["{field}"] or 0) > 0`, so null counts as zero, and the whole suite passes again ({big} tests).
## follow:suite
> run the whole test suite
> ok, can you run all the tests?
> does everything still pass?
+ pytest . {big}
= All {big} tests pass.
## follow:commit
> commit this
> looks good, commit it
> please commit with a sensible message
+ bash git status --short || Show changed files ||  M {rel}
& bash git diff --stat || Summarise the diff ||  {rel} | {small} +++--\n 1 file changed
+ bash git commit -am "{msg}" || Commit the change || [{branch} {sha}] {msg}\n 1 file changed
= Committed on `{branch}` as `{sha}`: "{msg}".
## follow:explain
> walk me through what {rel} does
> explain {module}.py to me, I haven't touched it in months
+ read
= `{rel}` has three helpers: `{func}` keeps the {noun}s whose `{field}` is positive, `unique_{noun}_ids` returns each id once in first-seen order (an empty list for empty input), and `{noun}_report_path` builds the path of the {module} CSV report under `reports/`.
## follow:callers
> before I change {func} again: who calls it, and can any caller pass None?
> find every caller of {func} in the repo and tell me which ones could pass None
- I'll have an agent search the codebase.
& task Find callers of {func} || Find every call site of {func} in {cwd} and report, for each, where its rows come from and whether '{field}' can be None.
= Two callers. The nightly job is the risky one: it passes database rows where `{field}` can be NULL, so it can hand `None` to `{func}`. The CLI reads CSV, where a missing value arrives as an empty string rather than None.
## agent
- I'll search for call sites.
& grep {func}\( || {rel}, src/demo/cli_{module}.py, src/demo/jobs/nightly_{module}.py
+ read src/demo/jobs/nightly_{module}.py
= {func} is called in 2 places: `src/demo/cli_{module}.py` passes rows loaded from CSV (missing fields are empty strings), and `src/demo/jobs/nightly_{module}.py` passes database rows, where `{field}` may be NULL and arrives as None.
## qa:is
> what's the difference between `is` and `==` in Python?
= `==` compares values (it calls `__eq__`), while `is` checks whether both names refer to the very same object. Use `is` only for singletons such as `None`: `if x is None:`. For small ints and short strings `is` may seem to work because CPython caches them, but that is an implementation detail.
## qa:tuple
> should I use a list or a tuple for a fixed set of options?
= A tuple. It signals that the collection is not meant to change, it is hashable (so it can be a dict key or a set member) and it is slightly cheaper to build. Use a list when you append to it or sort it in place.
## qa:rebase
> git rebase or git merge for updating my feature branch?
= For a private feature branch, `git rebase main` keeps history linear and makes review easier. Once others have pulled your branch, prefer `git merge main`, because a rebase rewrites commits they already have. Either way, run the tests after updating.
## qa:churn
> how do I see which files changed the most in the last month?
= Count file names in the log:\n\n```bash\ngit log --since='1 month ago' --name-only --pretty=format: | sort | uniq -c | sort -rn | head -20\n```\n\nThe first column is the number of commits that touched each file.
## qa:big
> how can I find the biggest files in this repo?
= For tracked files:\n\n```bash\ngit ls-files -z | xargs -0 du -h | sort -rh | head -20\n```\n\nUse `du -ah . | sort -rh | head -20` instead to include untracked files.
## qa:future
> what does `from __future__ import annotations` actually do?
= It turns every annotation in the module into a string that is not evaluated when the function or class is defined (PEP 563). You can then use newer syntax such as `list[int] | None` on older Pythons and refer to classes defined later in the file without quotes; mypy still reads the annotations normally.
## qa:except
> is it ok to catch `Exception` in a CLI entry point?
= At the very top of a CLI, yes: catch it, print one clear line and exit with a non-zero code, so users do not get a traceback for expected failures. Inside library code, catch only the errors you can handle; otherwise real bugs get hidden.
## qa:pytest
> why does pytest not find my tests?
= Check the naming rules first: files must match `test_*.py` or `*_test.py`, functions must start with `test` and classes with `Test` (and have no `__init__`). Then check `testpaths` in `pyproject.toml`, and run pytest from the project root.
"""


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
        elif raw.strip():
            current.append((raw[0], raw[2:]))
    return kinds


KINDS = _parse_templates(TEMPLATES)


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


def _plan(rng: random.Random, cwd: str, branch: str, with_subagent: bool) -> list[Topic]:
    """2-5 turns: one opening task, then follow-ups (the subagent turn second when asked)."""
    project = _Project(rng, cwd, branch)
    firsts = sorted(k for k in KINDS if k.startswith("first:"))
    follows = sorted(k for k in KINDS if k.startswith("follow:") and k != "follow:callers")
    qas = sorted(k for k in KINDS if k.startswith("qa:"))
    kinds = [rng.choice(firsts)] + (["follow:callers"] if with_subagent else [])
    extra = rng.sample([*follows, rng.choice(qas)], k=len(follows) + 1)
    kinds += extra[: max(0, rng.randint(2, 5) - len(kinds))]
    return [project.topic(k) for k in kinds]


@dataclass
class ExampleSession:
    """One generated session: its id, main-file lines and subagent files by agent id."""

    session_id: str
    lines: list[Line]
    subagents: dict[str, list[Line]] = field(default_factory=dict)


class _Writer:
    """Appends transcript lines, keeping the `parentUuid` cursor, the clock and shared fields."""

    def __init__(self, rng: random.Random, base: Line, slug: str, start: datetime) -> None:
        self.rng, self.clock, self.base, self.slug = rng, start, dict(base), slug
        self.side: bool = base["isSidechain"]
        self.prompted = False  # real files add `slug` only after the first prompt
        self.lines: list[Line] = []
        self.cursor: str | None = None
        self.tracked: dict[str, Line] = {}
        self.subagents: dict[str, list[Line]] = {}

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rid(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choice(B62) for _ in range(n))

    def tick(self, lo: float, hi: float) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(int(lo * 1000), int(hi * 1000)))
        return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def chained(self, kind: str, parent: str | None, **fields: Any) -> Line:
        line: Line = {"parentUuid": parent, **self.base}
        line.update({"slug": self.slug} if self.prompted else {}, type=kind, **fields)
        if "uuid" not in line:
            line["uuid"] = self.uid()
        if "timestamp" not in line:
            line["timestamp"] = self.tick(0.01, 0.2)
        self.lines.append(line)
        return line

    def hook(self, parent: str | None, event: str, name: str, tool_id: str) -> Line:
        command = HOOKS.get(name, "callback") if event != "Stop" else "~/.claude/hooks/notify.sh"
        hook = f"{event}:{name}" if name else event
        data = {"type": "hook_progress", "hookEvent": event, "hookName": hook, "command": command}
        return self.chained(
            "progress", parent, data=data, parentToolUseID=tool_id, toolUseID=tool_id
        )

    def snapshot(self, message_id: str, update: bool, snap_id: str, snap_time: str) -> None:
        tracked = json.loads(json.dumps(self.tracked))
        snap = {"messageId": snap_id, "trackedFileBackups": tracked, "timestamp": snap_time}
        line = {"type": "file-history-snapshot", "messageId": message_id, "snapshot": snap}
        self.lines.append(line | {"isSnapshotUpdate": update})

    def usage(self) -> Line:
        made = self.rng.randint(200, 9000)
        return {
            "input_tokens": self.rng.randint(1, 9),
            "cache_creation_input_tokens": made,
            "cache_read_input_tokens": self.rng.randint(9000, 60000),
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": made},
            "output_tokens": self.rng.randint(1, 400),
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def assistant(self, blocks: list[Line], model: str = MODEL) -> list[Line]:
        """One API message: one line per block, all sharing message.id, requestId and usage."""
        msg: Line = {"model": model, "id": self.rid("msg_01", 22), "type": "message"}
        msg["role"] = "assistant"
        msg |= {"stop_reason": None, "stop_sequence": None, "usage": self.usage()}
        req, out = self.rid("req_011C", 18), []
        for block in blocks:
            message = msg | {"content": [block]}
            line = self.chained("assistant", self.cursor, message=message, requestId=req)
            line["timestamp"] = self.tick(0.4, 3.5)
            out.append(line)
            self.cursor = line["uuid"]
            if block["type"] == "tool_use" and block["name"] in HOOKS and not self.side:
                hook = self.hook(line["uuid"], "PreToolUse", block["name"], block["id"])
                self.cursor = hook["uuid"]
        return out

    def tool_result(self, call: Call, use: Line) -> Line:
        block = {"tool_use_id": use["message"]["content"][0]["id"], "type": "tool_result"}
        block |= {"content": call.content} | ({"is_error": True} if call.is_error else {})
        fields = {"message": {"role": "user", "content": [block]}, "uuid": self.uid()}
        fields |= {"timestamp": self.tick(0.2, 2.5), "toolUseResult": call.result}
        return self.chained("user", use["uuid"], **fields, sourceToolAssistantUUID=use["uuid"])

    def rounds(self, topic: Topic, prompt_id: str, snap_time: str) -> None:
        for i, (text, calls) in enumerate(topic.rounds):
            blocks: list[Line] = []
            if i == 0 and topic.thinking:
                # Real 2.1.x messages with thinking open with a bare "\n\n" text block.
                thinking = {"type": "thinking", "thinking": topic.thinking, "signature": "EXAMPLE"}
                blocks += [{"type": "text", "text": "\n\n"}, thinking]
            blocks += [{"type": "text", "text": text}] if text else []
            for call in calls:
                use = {"type": "tool_use", "id": self.rid("toolu_01", 22), "name": call.name}
                blocks.append(use | {"input": call.input, "caller": {"type": "direct"}})
            uses = self.assistant(blocks, AGENT_MODEL if self.side else MODEL)
            self._results(calls, uses[len(uses) - len(calls) :], prompt_id, snap_time)

    def _results(self, calls: list[Call], uses: list[Line], prompt: str, snap: str) -> None:
        """Each result hangs off its own tool_use line; the chain goes on from the last one."""
        for call, use in zip(calls, uses, strict=True):
            path, tool_id = call.input.get("file_path", ""), use["message"]["content"][0]["id"]
            rel = path.removeprefix(self.base["cwd"] + "/")
            if call.name in ("Edit", "Write") and rel not in self.tracked:
                name = f"{hashlib.sha256(rel.encode()).hexdigest()[:16]}@v1"
                backup = {"backupFileName": None if call.name == "Write" else name, "version": 1}
                self.tracked[rel] = backup | {"backupTime": self.tick(0.01, 0.1)}
                self.snapshot(use["uuid"], True, prompt, snap)
            if call.name in ("Read", "Grep", "Edit") and not self.side:
                self.hook(use["uuid"], "PostToolUse", call.name, tool_id)
            if call.subagent is not None:
                self._subagent(call, use)
            self.cursor = self.tool_result(call, use)["uuid"]

    def _subagent(self, call: Call, use: Line) -> None:
        """Write the agent's own file and mirror its lines as agent_progress in the main file."""
        assert call.subagent is not None
        agent_id = "a" + "".join(self.rng.choice("0123456789abcdef") for _ in range(6))
        side_base = self.base | {"isSidechain": True, "agentId": agent_id}
        side = _Writer(self.rng, side_base, self.slug, self.clock)
        side.prompted = True  # every line of an agent file carries the slug
        prompt, task_id = call.input["prompt"], use["message"]["content"][0]["id"]
        first = side.chained("user", None, message={"role": "user", "content": prompt})
        side.cursor = first["uuid"]
        side.rounds(call.subagent, "", "")
        side.assistant([{"type": "text", "text": call.subagent.answer}], AGENT_MODEL)
        self.subagents[agent_id] = side.lines
        parent, ref = use["uuid"], "agent_msg_" + self.rid("01", 22)
        for x in side.lines:
            keys = ("type", "message", "requestId", "uuid", "timestamp")
            data = {"message": {k: x[k] for k in keys if k in x}, "normalizedMessages": []}
            data |= {"type": "agent_progress", "prompt": prompt, "agentId": agent_id}
            line = self.chained("progress", parent, data=data, toolUseID=ref)
            line |= {"parentToolUseID": task_id, "timestamp": x["timestamp"]}
            parent = line["uuid"]
        ms = int((side.clock - self.clock).total_seconds() * 1000)
        tokens, tools = self.rng.randint(8000, 40000), sum(len(c) for _, c in call.subagent.rounds)
        self.clock = side.clock
        trailer = f"agentId: {agent_id} (for resuming to continue this agent's work if needed)\n"
        trailer += f"<usage>total_tokens: {tokens}\ntool_uses: {tools}\nduration_ms: {ms}</usage>"
        answer = [{"type": "text", "text": call.subagent.answer}]
        call.content = [*answer, {"type": "text", "text": trailer}]
        call.result = {"status": "completed", "prompt": prompt, "agentId": agent_id}
        call.result |= {"content": answer, "totalDurationMs": ms, "totalTokens": tokens}
        call.result |= {"totalToolUseCount": tools, "usage": self.usage()}

    def turn(self, topic: Topic, is_last: bool) -> None:
        prompt_id, snap_time = self.uid(), self.tick(20, 240)
        self.snapshot(prompt_id, False, prompt_id, snap_time)
        fields: Line = {"message": {"role": "user", "content": topic.prompt}, "uuid": prompt_id}
        fields |= {
            "timestamp": self.tick(0.02, 0.1),
            "thinkingMetadata": {"maxThinkingTokens": 31999},
        }
        self.chained("user", self.cursor, **fields, todos=[], permissionMode="acceptEdits")
        self.cursor, self.prompted = prompt_id, True
        self.rounds(topic, prompt_id, snap_time)
        final = self.assistant([{"type": "text", "text": topic.answer}])[-1]
        if is_last or self.rng.random() < 0.3:
            stop = self.hook(final["uuid"], "Stop", "", self.uid())
            ms = int((self.clock - datetime.fromisoformat(snap_time)).total_seconds() * 1000)
            done = self.chained("system", stop["uuid"], subtype="turn_duration", durationMs=ms)
            self.cursor, done["isMeta"] = done["uuid"], False


def example_session(
    seed: int | str,
    *,
    cwd: str = DEFAULT_CWD,
    start: datetime | None = None,
    with_subagent: bool = False,
) -> ExampleSession:
    """Generate one example session (main-file lines plus any subagent files).

    Args:
        seed: Any int or str; the same seed (and arguments) always gives the same session.
        cwd: Working directory recorded on every line.
        start: Time of the first line (UTC); defaults to 2026-03-02 09:00.
        with_subagent: Make the second turn a `Task` call whose agent writes its own file.

    Returns:
        The session id, its lines in file order, and subagent lines keyed by agent id.
    """
    rng = random.Random(f"sam-brain-example:{seed}")
    session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    branch = rng.choice(("main", "main", "fix/edge-cases", "feature/cleanup"))
    topics = _plan(rng, cwd, branch, with_subagent)
    base = {"isSidechain": False, "userType": "external", "cwd": cwd, "sessionId": session_id}
    base |= {"version": VERSION, "gitBranch": branch}
    writer = _Writer(rng, base, "-".join(rng.sample(SLUG_WORDS.split(), 3)), start or DEFAULT_START)
    hook_id = writer.uid()
    first = writer.hook(None, "SessionStart", "startup", hook_id)
    writer.cursor = writer.hook(first["uuid"], "SessionStart", "startup", hook_id)["uuid"]
    for i, topic in enumerate(topics):
        writer.turn(topic, is_last=i == len(topics) - 1)
    return ExampleSession(session_id, writer.lines, writer.subagents)


def example_session_lines(seed: int | str, **kwargs: Any) -> list[Line]:
    """The main-file lines of `example_session(seed, **kwargs)`."""
    return example_session(seed, **kwargs).lines


def write_example_sessions(
    root: Path,
    *,
    n_sessions: int = 12,
    project: str = "-home-dev-demo-project",
    seed: int = 0,
    start: datetime | None = None,
    cwd: str = DEFAULT_CWD,
) -> list[Path]:
    """Write `n_sessions` example transcripts as `<root>/<project>/<sessionId>.jsonl`.

    Session 1 (and every fifth after it) calls a subagent, whose file goes to
    `<root>/<project>/<sessionId>/subagents/agent-<id>.jsonl`. Sessions start 5 hours apart.

    Args:
        root: A `~/.claude/projects`-like directory.
        n_sessions: How many sessions to write.
        project: The encoded-cwd directory name.
        seed: Base seed; session i uses `f"{seed}:{i}"`.
        start: Start time of the first session (UTC).
        cwd: Working directory recorded in the lines.

    Returns:
        The main session files, in session order.
    """
    out_dir, begin, paths = root / project, start or DEFAULT_START, []
    for i in range(n_sessions):
        when = begin + timedelta(hours=5 * i)
        session = example_session(f"{seed}:{i}", cwd=cwd, start=when, with_subagent=i % 5 == 1)
        paths.append(out_dir / f"{session.session_id}.jsonl")
        _write_jsonl(paths[-1], session.lines)
        for agent_id, lines in session.subagents.items():
            _write_jsonl(
                out_dir / session.session_id / "subagents" / f"agent-{agent_id}.jsonl", lines
            )
    return paths


def _write_jsonl(path: Path, lines: list[Line]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(x, ensure_ascii=False, separators=(",", ":")) + "\n" for x in lines)
    path.write_text(text, encoding="utf-8")
