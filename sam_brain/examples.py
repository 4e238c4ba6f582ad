"""Write example Claude Code transcripts in the real 2.1.x on-disk format, for demos and tests.

Sessions are generated deterministically from a seed: plausible conversations about small coding
tasks in a made-up Python project, combined from templates (task kind x module x function x wording)
so that sessions differ. The format follows real 2.1.39 files: one content block per assistant
line sharing `message.id`/`requestId`, `progress` hook lines inside the `parentUuid` chain,
`file-history-snapshot` lines, tool results with `toolUseResult`, a thinking block, parallel tool
calls that fork the tree, a `turn_duration` system line and, when asked, a `Task` subagent with
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

VERSION = "2.1.39"
MODEL = "claude-opus-4-6"
AGENT_MODEL = "claude-haiku-4-5-20251001"
DEFAULT_CWD = "/home/dev/demo-project"
DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
B62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
SLUG_WORDS = (
    "humble",
    "quiet",
    "brisk",
    "lucky",
    "mellow",
    "tidy",
    "nimble",
    "sunny",
    "gentle",
    "witty",
    "dancing",
    "drifting",
    "humming",
    "sorting",
    "folding",
    "weaving",
    "baking",
    "sketching",
    "otter",
    "heron",
    "maple",
    "comet",
    "pebble",
    "lantern",
    "walrus",
    "meadow",
    "falcon",
    "tulip",
)
PRE_HOOKS = {
    "Bash": "./scripts/guard.sh",
    "Edit": "./scripts/guard.sh",
    "Write": "./scripts/guard.sh",
}
POST_HOOKS = {"Read": "callback", "Glob": "callback", "Grep": "callback", "Edit": "ruff format"}


# ---- content: a made-up project and templated tasks --------------------------------------------


@dataclass
class Call:
    """One tool call: its input, the tool_result content and the structured `toolUseResult`."""

    name: str
    input: dict[str, Any]
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


MODULES = (
    ("inventory", "item", "quantity"),
    ("billing", "invoice", "amount"),
    ("reports", "report", "pages"),
    ("accounts", "account", "balance"),
    ("scheduler", "job", "priority"),
    ("search", "hit", "score"),
    ("notifications", "message", "retries"),
    ("exporter", "row", "size"),
    ("importer", "record", "version"),
    ("metrics", "sample", "value"),
    ("uploads", "upload", "bytes"),
    ("shipping", "parcel", "weight"),
    ("library", "book", "copies"),
    ("recipes", "recipe", "servings"),
)
FUNC_FORMS = ("filter_{n}s", "active_{n}s", "keep_positive_{n}s", "visible_{n}s", "pending_{n}s")
GENERAL_QA = (
    (
        "what's the difference between `is` and `==` in Python?",
        "`==` compares values (it calls `__eq__`), while `is` checks whether both names point to the very same object. Use `is` only for singletons such as `None`: `if x is None:`. For strings and numbers, `is` may appear to work for small values because CPython caches them, but that is an implementation detail.",
    ),
    (
        "should I use a list or a tuple for a fixed set of options?",
        "A tuple. It signals that the collection is not meant to change, it is hashable (so it can be a dict key or go in a set), and it is slightly cheaper to create. Use a list when you append or sort in place.",
    ),
    (
        "git rebase or git merge for updating my feature branch?",
        "For a private feature branch, `git rebase main` keeps history linear and makes the eventual review easier. Once others have pulled your branch, prefer `git merge main`, because rebasing rewrites commits they already have. Either way, run the tests after updating.",
    ),
    (
        "how do I see which files changed the most in the last month?",
        "Count file names in the log:\\n\\n```bash\\ngit log --since='1 month ago' --name-only --pretty=format: | sort | uniq -c | sort -rn | head -20\\n```\\n\\nThe first column is the number of commits that touched each file.",
    ),
    (
        "how can I find the biggest files in this repo?",
        "For tracked files:\\n\\n```bash\\ngit ls-files -z | xargs -0 du -h | sort -rh | head -20\\n```\\n\\nDrop the `git ls-files` part and use `du -ah . | sort -rh | head -20` to include untracked files as well.",
    ),
    (
        "what does `from __future__ import annotations` actually do?",
        "It makes every annotation in the module a string that is not evaluated at definition time (PEP 563). You can then use newer syntax such as `list[int] | None` on older Pythons, and refer to classes defined later in the file without quotes. Tools like mypy still read the annotations normally.",
    ),
    (
        "is it ok to catch `Exception` in a CLI entry point?",
        "At the very top of a CLI, yes: catch it, print one clear line and exit with a non-zero code, so users do not see a traceback for expected failures. Inside library code, catch only the specific errors you can handle, otherwise real bugs get hidden.",
    ),
    (
        "why does pytest not find my tests?",
        "Check the naming rules first: files must match `test_*.py` or `*_test.py`, functions must start with `test`, and classes with `Test` (without an `__init__`). Also check `testpaths` in `pyproject.toml` and that you run pytest from the project root.",
    ),
)


@dataclass
class _Ctx:
    cwd: str
    module: str
    noun: str
    field: str
    func: str
    src: str = ""

    @property
    def rel(self) -> str:
        return f"src/demo/{self.module}.py"


def _source(c: _Ctx) -> str:
    return (
        f'"""{c.noun.title()} helpers for the {c.module} service."""\n\nimport os\n\n\n'
        f"def {c.func}(rows):\n    out = []\n    for row in rows:\n"
        f'        if row["{c.field}"] > 0:\n            out.append(row)\n    return out\n\n\n'
        f"def unique_{c.noun}_ids(rows):\n    seen = []\n    for row in rows:\n"
        f'        if row["id"] not in seen:\n            seen.append(row["id"])\n    return seen\n\n\n'
        f'def {c.noun}_report_path(base):\n    return os.path.join(base, "reports", "{c.module}.csv")\n'
    )


def _read(c: _Ctx, rel: str, text: str) -> Call:
    lines = text.splitlines()
    numbered = "\n".join(f"{i:>6}\u2192{line}" for i, line in enumerate(lines, 1))
    file = {
        "filePath": f"{c.cwd}/{rel}",
        "content": text,
        "numLines": len(lines),
        "startLine": 1,
        "totalLines": len(lines),
    }
    return Call("Read", {"file_path": f"{c.cwd}/{rel}"}, numbered, {"type": "text", "file": file})


def _edit(c: _Ctx, old: str, new: str, rel: str = "") -> Call:
    """Edit the module source (or another file given as `rel`, whose text is `old`-bearing)."""
    rel = rel or c.rel
    original = c.src if rel == c.rel else old
    updated = original.replace(old, new, 1)
    if rel == c.rel:
        c.src = updated
    before, after = original.splitlines(), updated.splitlines()
    start = next((i for i, (a, b) in enumerate(zip(before, after, strict=False)) if a != b), 0)
    lo = max(0, start - 3)
    n_old, n_new = len(old.splitlines()), len(new.splitlines())
    hunk = (
        [" " + x for x in before[lo:start]]
        + ["-" + x for x in old.splitlines()]
        + ["+" + x for x in new.splitlines()]
    )
    patch = [
        {
            "oldStart": lo + 1,
            "oldLines": start - lo + n_old,
            "newStart": lo + 1,
            "newLines": start - lo + n_new,
            "lines": hunk,
        }
    ]
    path = f"{c.cwd}/{rel}"
    result = {
        "filePath": path,
        "oldString": old,
        "newString": new,
        "originalFile": original,
        "replaceAll": False,
        "structuredPatch": patch,
        "userModified": False,
    }
    args = {"file_path": path, "old_string": old, "new_string": new, "replace_all": False}
    return Call("Edit", args, f"The file {path} has been updated successfully.", result)


def _write(c: _Ctx, rel: str, text: str) -> Call:
    path = f"{c.cwd}/{rel}"
    result = {
        "type": "create",
        "filePath": path,
        "content": text,
        "structuredPatch": [],
        "originalFile": None,
    }
    return Call(
        "Write",
        {"file_path": path, "content": text},
        f"File created successfully at: {path}",
        result,
    )


def _bash(cmd: str, desc: str, out: str, code: int = 0) -> Call:
    if code:
        text = f"Exit code {code}\n{out}"
        return Call(
            "Bash", {"command": cmd, "description": desc}, text, f"Error: {text}", is_error=True
        )
    result = {
        "stdout": out,
        "stderr": "",
        "interrupted": False,
        "isImage": False,
        "noOutputExpected": False,
    }
    return Call("Bash", {"command": cmd, "description": desc}, out, result)


def _grep(c: _Ctx, pattern: str, rels: list[str]) -> Call:
    files = [f"{c.cwd}/{r}" for r in rels]
    text = f"Found {len(files)} files\n" + "\n".join(files)
    return Call(
        "Grep",
        {"pattern": pattern, "path": c.cwd},
        text,
        {"mode": "files_with_matches", "filenames": files, "numFiles": len(files)},
    )


def _pytest(target: str, n: int, rng: random.Random) -> Call:
    dots = "." * n
    return _bash(
        f"python -m pytest -q {target}".strip(),
        "Run the tests",
        f"{dots:<40} [100%]\n{n} passed in {rng.randint(8, 95) / 100:.2f}s",
    )


def _t_keyerror(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"test_{c.func} is failing with KeyError: '{c.field}', can you fix it?",
            f"{c.func} blows up with a KeyError when a {c.noun} has no {c.field}. fix pls",
            f"getting `KeyError: '{c.field}'` from {c.module}.{c.func} in the logs. make it tolerate {c.noun}s without a {c.field}",
        )
    )
    old = f'        if row["{c.field}"] > 0:'
    rounds = [
        ("I'll look at the function first.", [_read(c, c.rel, c.src)]),
        (
            f'`{c.func}` indexes `row["{c.field}"]` directly. I\'ll use `.get` with a default of 0.',
            [_edit(c, old, f'        if row.get("{c.field}", 0) > 0:')],
        ),
        ("", [_pytest(f"tests/test_{c.module}.py", rng.randint(3, 9), rng)]),
    ]
    answer = f'Fixed. `{c.func}` now reads the field with `row.get("{c.field}", 0)`, so a {c.noun} without a `{c.field}` is treated as 0 and skipped instead of raising `KeyError`. The {c.module} tests pass.'
    thinking = f"The KeyError on '{c.field}' most likely comes from {c.func} indexing the dict directly. Let me read {c.rel} before changing anything."
    return Topic(prompt, rounds, answer, thinking)


def _t_dedupe(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"unique_{c.noun}_ids takes forever on big inputs (100k {c.noun}s). why?",
            f"profiling shows unique_{c.noun}_ids as the hot spot in {c.module}, can you speed it up without changing the order of ids?",
        )
    )
    old = '    seen = []\n    for row in rows:\n        if row["id"] not in seen:\n            seen.append(row["id"])\n    return seen'
    new = '    # dict keeps insertion order, and membership checks are O(1)\n    return list(dict.fromkeys(row["id"] for row in rows))'
    timing = _bash(
        f'python -m timeit -s "from demo.{c.module} import unique_{c.noun}_ids; rows=[{{\\"id\\": i % 5000}} for i in range(100000)]" "unique_{c.noun}_ids(rows)"',
        "Time the new version",
        f"20 loops, best of 5: {rng.randint(40, 90) / 10:.1f} msec per loop",
    )
    rounds = [
        ("", [_read(c, c.rel, c.src)]),
        (
            "The loop checks membership in a list, which is O(n) per lookup, so the whole function is O(n^2).",
            [_edit(c, old, new)],
        ),
        ("", [timing]),
    ]
    answer = f'`unique_{c.noun}_ids` did `row["id"] not in seen` on a list, so each check scanned every id seen so far: quadratic time. It now uses `dict.fromkeys`, which keeps the first-seen order and makes each check O(1). On 100k {c.noun}s it runs in a few milliseconds.'
    return Topic(
        prompt,
        rounds,
        answer,
        "Classic quadratic dedupe via list membership. dict.fromkeys keeps order, so the output stays the same.",
    )


def _t_types(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"add type hints to {c.rel}",
            f"can you type-annotate {c.module}.py so mypy --strict is happy?",
            f"mypy complains about missing annotations in the {c.module} module, please fix",
        )
    )
    rounds = [
        ("", [_read(c, c.rel, c.src)]),
        (
            "",
            [
                _edit(
                    c,
                    f"def {c.func}(rows):\n    out = []",
                    f"def {c.func}(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:\n    out: list[dict[str, Any]] = []",
                ),
                _edit(c, "import os\n", "import os\nfrom typing import Any\n"),
            ],
        ),
        (
            "",
            [
                _bash(
                    f"mypy --strict {c.rel}",
                    "Type-check the module",
                    "Success: no issues found in 1 source file",
                )
            ],
        ),
    ]
    answer = f"Done. `{c.func}` now takes and returns `list[dict[str, Any]]`, with `Any` imported from `typing`, and `mypy --strict {c.rel}` reports no issues. The other two functions were already simple enough for mypy to infer once the rows type is known."
    return Topic(prompt, rounds, answer)


def _t_logging(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"add debug logging to {c.func} so I can see how many {c.noun}s get dropped",
            f"I want {c.func} to log how many {c.noun}s it filtered out, at debug level",
        )
    )
    edits = [
        _edit(c, "import os\n", "import logging\nimport os\n\nlog = logging.getLogger(__name__)\n"),
        _edit(
            c,
            "            out.append(row)\n    return out",
            f'            out.append(row)\n    log.debug("{c.func}: kept %d of %d {c.noun}s", len(out), len(rows))\n    return out',
        ),
    ]
    rounds = [
        ("", [_read(c, c.rel, c.src)]),
        ("I'll add a module logger and one debug line at the end of the function.", edits),
    ]
    answer = f"Added a module-level `log = logging.getLogger(__name__)` and a debug line at the end of `{c.func}`: `kept N of M {c.noun}s`. It uses %-style arguments, so the message is only formatted when debug logging is on. Enable it with `logging.basicConfig(level=logging.DEBUG)`."
    return Topic(prompt, rounds, answer)


def _t_rename(c: _Ctx, rng: random.Random) -> Topic:
    new_name = rng.choice(("select", "keep", "only")) + f"_{c.noun}s_with_{c.field}"
    prompt = rng.choice(
        (
            f"rename {c.func} to {new_name} everywhere",
            f"{c.func} is a confusing name, call it {new_name} and update the callers",
        )
    )
    cli = f"src/demo/cli_{c.module}.py"
    cli_old = f"from demo.{c.module} import {c.func}\n"
    calls = [
        _edit(c, f"def {c.func}(rows", f"def {new_name}(rows"),
        _edit(c, cli_old, f"from demo.{c.module} import {new_name}\n", rel=cli),
    ]
    rounds = [
        ("", [_grep(c, c.func, [c.rel, cli, f"tests/test_{c.module}.py"])]),
        ("Three files use it. Updating the definition and the CLI import first.", calls),
        (
            "",
            [
                _bash(
                    f"sed -i 's/{c.func}/{new_name}/g' tests/test_{c.module}.py && python -m pytest -q",
                    "Update the test and run the suite",
                    f"{rng.randint(12, 60)} passed in 1.{rng.randint(10, 99)}s",
                )
            ],
        ),
    ]
    answer = f"Renamed `{c.func}` to `{new_name}` in the module, the CLI import and the tests; a grep shows no remaining uses of the old name and the suite passes. If other repositories import it, keep a deprecated alias for one release."
    c.func = new_name
    return Topic(
        prompt,
        rounds,
        answer,
        "Need every reference before renaming. Grep first, then edit each file.",
    )


def _t_pathlib(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"switch {c.module}.py from os.path to pathlib",
            f"can {c.noun}_report_path return a Path instead of a string?",
        )
    )
    old = f'def {c.noun}_report_path(base):\n    return os.path.join(base, "reports", "{c.module}.csv")'
    new = f'def {c.noun}_report_path(base: str | Path) -> Path:\n    return Path(base) / "reports" / "{c.module}.csv"'
    rounds = [
        ("", [_read(c, c.rel, c.src)]),
        ("", [_edit(c, old, new), _edit(c, "import os\n", "from pathlib import Path\n")]),
        ("", [_pytest("", rng.randint(10, 50), rng)]),
    ]
    answer = f"`{c.noun}_report_path` now accepts a `str` or `Path` and returns a `Path` built with `/`, and `import os` is gone because nothing else used it. Callers that format the result with f-strings keep working; any that call string methods on it need `str(...)`."
    return Topic(prompt, rounds, answer)


def _t_test(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"write a pytest test for {c.func}",
            f"there's no test for {c.func} yet, add one that covers the edge cases",
        )
    )
    test = f'from demo.{c.module} import {c.func}\n\n\ndef test_{c.func}_keeps_positive_{c.field}():\n    rows = [{{"id": 1, "{c.field}": 3}}, {{"id": 2, "{c.field}": 0}}, {{"id": 3, "{c.field}": -1}}]\n    assert [r["id"] for r in {c.func}(rows)] == [1]\n\n\ndef test_{c.func}_empty():\n    assert {c.func}([]) == []\n'
    rel = f"tests/test_{c.module}_{c.field}.py"
    rounds = [
        ("", [_read(c, c.rel, c.src)]),
        ("", [_write(c, rel, test)]),
        ("", [_pytest(rel, 2, rng)]),
    ]
    answer = f"Added `{rel}` with two tests: one checks that only {c.noun}s with a positive `{c.field}` are kept (zero and negative are dropped), the other that an empty list gives an empty list. Both pass."
    return Topic(prompt, rounds, answer)


def _t_ci(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            "CI is red, can you check what's failing?",
            "tests fail locally after my last pull, can you take a look?",
        )
    )
    fail = f"F{'.' * rng.randint(5, 20)}\nFAILED tests/test_{c.module}.py::test_{c.func} - TypeError: '>' not supported between instances of 'NoneType' and 'int'\n1 failed"
    rounds = [
        (
            "",
            [
                _bash(
                    "python -m pytest -q -x",
                    "Run the suite and stop at the first failure",
                    fail,
                    code=1,
                )
            ],
        ),
        ("", [_read(c, c.rel, c.src)]),
        (
            f"Some {c.noun}s have `{c.field}: None`. I'll treat None like 0.",
            [
                _edit(
                    c,
                    f'        if row["{c.field}"] > 0:',
                    f'        if (row["{c.field}"] or 0) > 0:',
                )
            ],
        ),
        ("", [_pytest("", rng.randint(20, 80), rng)]),
    ]
    answer = f'One test failed: `{c.func}` compared `None > 0` for {c.noun}s whose `{c.field}` is null (new fixtures added in the last pull contain one). I changed the check to `(row["{c.field}"] or 0) > 0`, so null counts as zero, and the whole suite passes again.'
    return Topic(
        prompt, rounds, answer, "Run the tests first to see the actual failure instead of guessing."
    )


FIRST_KINDS = (_t_keyerror, _t_dedupe, _t_types, _t_logging, _t_rename, _t_pathlib, _t_test, _t_ci)


def _f_suite(c: _Ctx, rng: random.Random) -> Topic:
    n = rng.randint(20, 120)
    prompt = rng.choice(
        (
            "run the whole test suite",
            "ok, can you run all the tests?",
            "does everything still pass?",
        )
    )
    return Topic(prompt, [("", [_pytest("", n, rng)])], f"All {n} tests pass.")


def _f_commit(c: _Ctx, rng: random.Random) -> Topic:
    msg = (
        f"Fix {c.func} handling in {c.module}"
        if rng.random() < 0.5
        else f"Tidy up {c.module} helpers"
    )
    prompt = rng.choice(
        ("commit this", "looks good, commit it", "please commit with a sensible message")
    )
    status = _bash("git status --short", "Show changed files", f" M {c.rel}")
    diff = _bash(
        "git diff --stat",
        "Summarise the diff",
        f" {c.rel} | {rng.randint(2, 9)} +++--\n 1 file changed",
    )
    sha = "".join(rng.choice("0123456789abcdef") for _ in range(7))
    commit = _bash(
        f'git commit -am "{msg}"', "Commit the change", f"[main {sha}] {msg}\n 1 file changed"
    )
    return Topic(prompt, [("", [status, diff]), ("", [commit])], f'Committed as `{sha}`: "{msg}".')


def _f_general(c: _Ctx, rng: random.Random) -> Topic:
    question, answer = rng.choice(GENERAL_QA)
    return Topic(
        rng.choice(("unrelated, but ", "quick question: ", "")) + question,
        [],
        answer.replace("\\n", "\n"),
    )


def _f_explain(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"what does unique_{c.noun}_ids return for an empty list?",
            f"explain {c.noun}_report_path to me",
            f"walk me through what {c.rel} does",
        )
    )
    answer = f"`{c.rel}` has three helpers: `{c.func}` keeps the {c.noun}s whose `{c.field}` is positive, `unique_{c.noun}_ids` returns each id once in first-seen order (an empty list for empty input), and `{c.noun}_report_path` builds the path of the {c.module} CSV report under `reports/`."
    return Topic(prompt, [("", [_read(c, c.rel, c.src)])], answer)


FOLLOW_KINDS = (_f_suite, _f_commit, _f_general, _f_explain)


def _t_subagent(c: _Ctx, rng: random.Random) -> Topic:
    prompt = rng.choice(
        (
            f"find every caller of {c.func} in the repo and tell me which ones could pass None",
            f"before I change {c.func} again: who calls it?",
        )
    )
    callers = [f"src/demo/cli_{c.module}.py", f"src/demo/jobs/nightly_{c.module}.py"]
    agent_answer = f"{c.func} is called in 2 places: `{callers[0]}` passes rows loaded from CSV (fields can be empty strings), and `{callers[1]}` passes rows from the database, where `{c.field}` may be NULL and arrive as None."
    agent = Topic(
        prompt,
        [
            ("I'll search for call sites.", [_grep(c, f"{c.func}\\(", [c.rel, *callers])]),
            (
                "",
                [
                    _read(
                        c,
                        callers[1],
                        f"from demo.{c.module} import {c.func}\n\n\ndef run(db):\n    return {c.func}(db.fetch_all('{c.module}'))\n",
                    )
                ],
            ),
        ],
        agent_answer,
    )
    task = Call(
        "Task",
        {
            "description": f"Find callers of {c.func}",
            "subagent_type": "Explore",
            "prompt": f"Find every call site of {c.func} in {c.cwd} and report, for each, where its rows come from and whether '{c.field}' can be None.",
        },
        "",
        {},
        subagent=agent,
    )
    answer = f"Two callers. The nightly job is the risky one: it passes database rows, where `{c.field}` can be NULL, so it can hand `None` to `{c.func}`. The CLI reads CSV, where a missing value is an empty string rather than None."
    return Topic(prompt, [("I'll have an agent search the codebase.", [task])], answer)


def _topics(
    rng: random.Random, cwd: str, n_turns: int, with_subagent: bool
) -> tuple[str, list[Topic]]:
    module, noun, fld = rng.choice(MODULES)
    c = _Ctx(cwd, module, noun, fld, rng.choice(FUNC_FORMS).format(n=noun))
    c.src = _source(c)
    topics = [rng.choice(FIRST_KINDS)(c, rng)]
    if with_subagent:
        topics.append(_t_subagent(c, rng))
    follow = rng.sample(FOLLOW_KINDS, k=len(FOLLOW_KINDS))
    while len(topics) < n_turns:
        topics.append(follow.pop()(c, rng))
    return module, topics


# ---- format: lines, chain, ids and clock ------------------------------------------------------


@dataclass
class ExampleSession:
    """One generated session: its id, main-file lines and subagent files by agent id."""

    session_id: str
    lines: list[dict[str, Any]]
    subagents: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


class _Writer:
    """Appends transcript lines, keeping the `parentUuid` cursor, clock and shared fields."""

    def __init__(
        self, rng: random.Random, session_id: str, cwd: str, branch: str, slug: str, start: datetime
    ) -> None:
        self.rng, self.clock = rng, start
        self.base: dict[str, Any] = {
            "isSidechain": False,
            "userType": "external",
            "cwd": cwd,
            "sessionId": session_id,
            "version": VERSION,
            "gitBranch": branch,
        }
        self.slug = slug
        self.prompted = False  # real files add `slug` only after the first prompt
        self.lines: list[dict[str, Any]] = []
        self.cursor: str | None = None
        self.tracked: dict[str, dict[str, Any]] = {}
        self.subagents: dict[str, list[dict[str, Any]]] = {}

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def rid(self, prefix: str, n: int) -> str:
        return prefix + "".join(self.rng.choice(B62) for _ in range(n))

    def tick(self, lo: float, hi: float) -> str:
        self.clock += timedelta(milliseconds=self.rng.randint(int(lo * 1000), int(hi * 1000)))
        return self.clock.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def chained(self, kind: str, parent: str | None, **fields: Any) -> dict[str, Any]:
        line: dict[str, Any] = {"parentUuid": parent, **self.base}
        if self.prompted:
            line["slug"] = self.slug
        line["type"] = kind
        line.update(fields)
        line.setdefault("uuid", self.uid())
        line.setdefault("timestamp", self.tick(0.01, 0.2))
        self.lines.append(line)
        return line

    def progress(self, parent: str, event: str, hook: str, tool_id: str) -> dict[str, Any]:
        data = {"type": "hook_progress", "hookEvent": event, "hookName": hook, "command": ""}
        data["command"] = {
            "SessionStart": "~/.claude/hooks/notify.sh start",
            "Stop": "~/.claude/hooks/notify.sh done",
        }.get(
            event,
            PRE_HOOKS.get(hook.split(":")[-1], "callback")
            if event == "PreToolUse"
            else POST_HOOKS.get(hook.split(":")[-1], "callback"),
        )
        return self.chained(
            "progress", parent, data=data, parentToolUseID=tool_id, toolUseID=tool_id
        )

    def session_start(self) -> None:
        hook_id = self.uid()
        first = self.progress(None, "SessionStart", "SessionStart:startup", hook_id)  # type: ignore[arg-type]
        second = self.progress(first["uuid"], "SessionStart", "SessionStart:startup", hook_id)
        self.cursor = second["uuid"]

    def snapshot(self, message_id: str, update: bool, snap_id: str, snap_time: str) -> None:
        self.lines.append(
            {
                "type": "file-history-snapshot",
                "messageId": message_id,
                "snapshot": {
                    "messageId": snap_id,
                    "trackedFileBackups": json.loads(json.dumps(self.tracked)),
                    "timestamp": snap_time,
                },
                "isSnapshotUpdate": update,
            }
        )

    def usage(self) -> dict[str, Any]:
        created = self.rng.randint(200, 9000)
        return {
            "input_tokens": self.rng.randint(1, 9),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": self.rng.randint(9000, 60000),
            "cache_creation": {
                "ephemeral_5m_input_tokens": 0,
                "ephemeral_1h_input_tokens": created,
            },
            "output_tokens": self.rng.randint(1, 400),
            "service_tier": "standard",
            "inference_geo": "not_available",
        }

    def assistant(self, blocks: list[dict[str, Any]], model: str = MODEL) -> list[dict[str, Any]]:
        """One API message: one line per block, all sharing message.id, requestId and usage."""
        msg_id, req_id, usage = self.rid("msg_01", 22), self.rid("req_011C", 18), self.usage()
        out = []
        for block in blocks:
            message = {
                "model": model,
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "content": [block],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": usage,
            }
            line = self.chained(
                "assistant",
                self.cursor,
                message=message,
                requestId=req_id,
                timestamp=self.tick(0.4, 3.5),
            )
            out.append(line)
            self.cursor = line["uuid"]
            if block["type"] == "tool_use" and block["name"] in PRE_HOOKS:
                hook = f"PreToolUse:{block['name']}"
                self.cursor = self.progress(line["uuid"], "PreToolUse", hook, block["id"])["uuid"]
        return out

    def tool_result(self, call: Call, use_line: dict[str, Any]) -> dict[str, Any]:
        block: dict[str, Any] = {"tool_use_id": use_line["message"]["content"][0]["id"]}
        block.update({"type": "tool_result", "content": call.content})
        if call.is_error:
            block["is_error"] = True
        return self.chained(
            "user",
            use_line["uuid"],
            message={"role": "user", "content": [block]},
            timestamp=self.tick(0.2, 2.5),
            toolUseResult=call.result,
            sourceToolAssistantUUID=use_line["uuid"],
        )

    def turn(self, topic: Topic, is_last: bool) -> None:
        prompt_id = self.uid()
        snap_time = self.tick(20, 240)
        self.snapshot(prompt_id, False, prompt_id, snap_time)
        self.chained(
            "user",
            self.cursor,
            message={"role": "user", "content": topic.prompt},
            uuid=prompt_id,
            timestamp=self.tick(0.02, 0.1),
            thinkingMetadata={"maxThinkingTokens": 31999},
            todos=[],
            permissionMode="acceptEdits",
        )
        self.cursor, self.prompted = prompt_id, True
        for i, (text, calls) in enumerate(topic.rounds):
            blocks: list[dict[str, Any]] = []
            if i == 0 and topic.thinking:
                # Real 2.1.x messages with thinking open with a bare "\n\n" text block.
                blocks += [
                    {"type": "text", "text": "\n\n"},
                    {
                        "type": "thinking",
                        "thinking": topic.thinking,
                        "signature": "EXAMPLE_SIGNATURE",
                    },
                ]
            if text:
                blocks.append({"type": "text", "text": text})
            for call in calls:
                use = {"type": "tool_use", "id": self.rid("toolu_01", 22), "name": call.name}
                blocks.append({**use, "input": call.input, "caller": {"type": "direct"}})
            lines = self.assistant(blocks)[-len(calls) :] if calls else []
            self._results(calls, lines, prompt_id, snap_time)
        final = self.assistant([{"type": "text", "text": topic.answer}])[-1]
        if is_last or self.rng.random() < 0.3:
            stop = self.progress(final["uuid"], "Stop", "Stop", self.uid())
            ms = int((self.clock - datetime.fromisoformat(snap_time)).total_seconds() * 1000)
            done = self.chained(
                "system", stop["uuid"], subtype="turn_duration", durationMs=ms, isMeta=False
            )
            self.cursor = done["uuid"]

    def _results(
        self, calls: list[Call], uses: list[dict[str, Any]], prompt_id: str, snap: str
    ) -> None:
        """Results hang off their own tool_use line; the chain continues from the last one."""
        last = self.cursor
        for call, use in zip(calls, uses, strict=True):
            path = call.input.get("file_path")
            if (
                call.name in ("Edit", "Write")
                and isinstance(path, str)
                and path not in self.tracked
            ):
                rel = path.split("/demo-project/")[-1]
                digest = hashlib.sha256(rel.encode()).hexdigest()[:16]
                name = None if call.name == "Write" else f"{digest}@v1"
                self.tracked[rel] = {
                    "backupFileName": name,
                    "version": 1,
                    "backupTime": self.tick(0.01, 0.1),
                }
                self.snapshot(use["uuid"], True, prompt_id, snap)
            if call.name in POST_HOOKS and not call.is_error:
                self.progress(
                    use["uuid"],
                    "PostToolUse",
                    f"PostToolUse:{call.name}",
                    use["message"]["content"][0]["id"],
                )
            if call.subagent is not None:
                call.result["agentId"] = self._subagent(call, use)
            last = self.tool_result(call, use)["uuid"]
        self.cursor = last

    def _subagent(self, call: Call, use: dict[str, Any]) -> str:
        """Write the Task agent's own file and mirror its lines as agent_progress in the main file."""
        assert call.subagent is not None
        agent_id = "a" + "".join(self.rng.choice("0123456789abcdef") for _ in range(6))
        side = _Writer(
            self.rng,
            self.base["sessionId"],
            self.base["cwd"],
            self.base["gitBranch"],
            self.slug,
            self.clock,
        )
        side.base.update(isSidechain=True, agentId=agent_id)
        side.prompted = True  # every line of a real agent file carries the slug
        side.chained("user", None, message={"role": "user", "content": call.input["prompt"]})
        side.cursor = side.lines[-1]["uuid"]
        for text, calls in call.subagent.rounds:
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            blocks += [
                {
                    "type": "tool_use",
                    "id": side.rid("toolu_01", 22),
                    "name": c.name,
                    "input": c.input,
                }
                for c in calls
            ]
            uses = side.assistant(blocks, model=AGENT_MODEL)[-len(calls) :]
            for c, u in zip(calls, uses, strict=True):
                side.cursor = side.tool_result(c, u)["uuid"]
        side.assistant([{"type": "text", "text": call.subagent.answer}], model=AGENT_MODEL)
        side_lines = side.lines
        for line in side_lines:
            line.pop("sourceToolAssistantUUID", None)
        self.subagents[agent_id] = side_lines
        parent, msg_ref = use["uuid"], "agent_msg_" + self.rid("01", 22)
        for line in side_lines:
            copy = {k: line[k] for k in ("type", "message", "uuid", "timestamp")}
            if "requestId" in line:
                copy["requestId"] = line["requestId"]
            data = {
                "message": copy,
                "normalizedMessages": [],
                "type": "agent_progress",
                "prompt": call.input["prompt"],
                "agentId": agent_id,
            }
            parent = self.chained(
                "progress",
                parent,
                data=data,
                toolUseID=msg_ref,
                parentToolUseID=use["message"]["content"][0]["id"],
            )["uuid"]
        tokens, ms = (
            self.rng.randint(8000, 40000),
            int((side.clock - self.clock).total_seconds() * 1000),
        )
        self.clock = side.clock
        call.content = [
            {"type": "text", "text": call.subagent.answer},
            {
                "type": "text",
                "text": f"agentId: {agent_id} (for resuming to continue this agent's work if needed)\n<usage>total_tokens: {tokens}\ntool_uses: {sum(len(c) for _, c in call.subagent.rounds)}\nduration_ms: {ms}</usage>",
            },
        ]
        call.result.update(
            status="completed",
            prompt=call.input["prompt"],
            content=[{"type": "text", "text": call.subagent.answer}],
            totalDurationMs=ms,
            totalTokens=tokens,
            totalToolUseCount=sum(len(c) for _, c in call.subagent.rounds),
            usage=self.usage(),
        )
        return agent_id


def example_session(
    seed: int | str,
    *,
    cwd: str = DEFAULT_CWD,
    start: datetime | None = None,
    with_subagent: bool = False,
) -> ExampleSession:
    """Generate one example session (main lines plus any subagent files).

    Args:
        seed: Anything `random.Random` accepts deterministically; the same seed gives the same session.
        cwd: Working directory recorded on every line.
        start: Time of the first line (UTC); defaults to 2026-03-02 09:00.
        with_subagent: Include a `Task` call whose agent writes its own file.

    Returns:
        The session id, its lines in file order, and subagent lines keyed by agent id.
    """
    rng = random.Random(f"sam-brain-example:{seed}")
    session_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    module, topics = _topics(rng, cwd, rng.randint(2, 5), with_subagent)
    branch = rng.choice(["main", "main", f"fix/{module}", f"feature/{module}-cleanup"])
    slug = "-".join(rng.sample(SLUG_WORDS, 3))
    writer = _Writer(rng, session_id, cwd, branch, slug, start or DEFAULT_START)
    writer.session_start()
    for i, topic in enumerate(topics):
        writer.turn(topic, is_last=i == len(topics) - 1)
    return ExampleSession(session_id, writer.lines, writer.subagents)


def example_session_lines(seed: int | str, **kwargs: Any) -> list[dict[str, Any]]:
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

    The second session (and every fifth after it) calls a subagent, whose file goes to
    `<root>/<project>/<sessionId>/subagents/agent-<id>.jsonl`. Sessions start a few hours apart.

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
    base = start or DEFAULT_START
    out_dir = root / project
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_sessions):
        session = example_session(
            f"{seed}:{i}", cwd=cwd, start=base + timedelta(hours=5 * i), with_subagent=i % 5 == 1
        )
        path = out_dir / f"{session.session_id}.jsonl"
        _write_jsonl(path, session.lines)
        for agent_id, lines in session.subagents.items():
            _write_jsonl(
                out_dir / session.session_id / "subagents" / f"agent-{agent_id}.jsonl", lines
            )
        paths.append(path)
    return paths


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(
        json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n" for line in lines
    )
    path.write_text(text, encoding="utf-8")
