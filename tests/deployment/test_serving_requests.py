"""Bad chat requests are the client's problem: 4xx with a message, never a version's error.

Over real HTTP (aiohttp's test server on loopback) with the tiny model: the malformed shapes
seen in the field, then a seeded fuzz of random and mutated bodies; zero 5xx, nothing recorded
against a version, and the rollback monitor finds nothing to roll back. A damaged adapter still
counts as its version's error.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from deployment.canary import HealthLimits
from deployment.chat_request import MAX_DEPTH
from deployment.prompt_limit import PromptLimit
from deployment.rollback import RollbackMonitor
from sam_brain.errors import BadRequest
from sam_brain.versions import Versions

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "Bash", "arguments": '{"command": "ls"}'},
}
AGENTIC = [
    {"role": "user", "content": "list the files"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "c1", "content": "a.txt"},
]


def with_calls(calls: Any) -> dict[str, Any]:
    return {"messages": [HELLO[0], {"role": "assistant", "content": "", "tool_calls": calls}]}


def raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


MALFORMED: list[tuple[Any, str]] = [
    (with_calls(7), "messages[1].tool_calls must be a list"),
    (with_calls([{"bogus": 1}]), "messages[1].tool_calls[0].function must be an object"),
    (with_calls(["x"]), "messages[1].tool_calls[0] must be an object"),
    (with_calls([{"function": {"arguments": "{}"}}]), "function.name must be a non-empty string"),
    (with_calls([{"function": {"name": "Bash", "arguments": "[1]"}}]), "must be a JSON object"),
    (with_calls([{"function": {"name": "Bash", "arguments": "{nope"}}]), "is not valid JSON"),
    (with_calls([{"function": {"name": "Bash", "arguments": 7}}]), "must be a JSON object"),
    (with_calls([{"type": "web", "function": {"name": "Bash"}}]), "type must be 'function'"),
    (
        {"messages": [{"role": "user", "content": "hi", "tool_calls": [CALL]}]},
        "only assistant messages make tool calls",
    ),
    ({"messages": [{"role": "user", "content": "a\x00b"}]}, "messages[0].content contains a NUL"),
    (raw('{"messages": [{"role": "user", "content": "a\\ud800b"}]}'), "contains a lone surrogate"),
    (raw('{"messages": [{"role": "user", "content": "hi"}], "user": "\\udfff"}'), "lone surrogate"),
    ({"messages": HELLO, "x\x00": 1}, "a key of body contains a NUL"),
    (b'{"messages": "\xff\xfe"}', "not UTF-8"),
    (raw("[" * 100_000 + "]" * 100_000), f"nested deeper than {MAX_DEPTH} levels"),
    (raw('{"messages": ' + "[" * 40 + "]" * 40 + "}"), f"nested deeper than {MAX_DEPTH} levels"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a string"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "content[0].text"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0] must be an object"),
    ({"messages": [{"content": "hi"}]}, "messages[0] must be an object with a role"),
    ({"messages": [HELLO[0]] * 3000}, "at most 2048"),
    ({"messages": HELLO, "model": "v" * 10_000}, "'model' is 10000 characters"),
    ({"messages": HELLO, "user": {"id": 1}}, "'user' must be a string"),
    (raw('{"messages": [], "max_tokens": ' + "9" * 5000 + "}"), "not valid JSON"),
    (raw('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'), "temperature"),
    ({"messages": HELLO, "max_tokens": 1e400}, "'max_tokens' must be an integer"),
    ({"messages": HELLO, "n": True}, "'n' must be 1"),
    ([1, 2], "must be a JSON object"),
    (b"", "not valid JSON"),
]


async def post(client: Any, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    resp = await client.post(
        "/v1/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )
    try:
        doc = await resp.json(content_type=None)
    except ValueError:
        doc = {}
    return resp.status, doc


@pytest.fixture
def healthy(lora_versions: Versions) -> Versions:
    """v1.0.0 active and healthy, with v1.0.1 deployed before it (a rollback target exists)."""
    lora_versions.activate("v1.0.1")
    lora_versions.activate("v1.0.0")
    assert lora_versions.rollback_target() is not None
    return lora_versions


async def test_malformed_bodies_answer_400_naming_the_problem(
    make_served: Any, healthy: Versions
) -> None:
    client, server, loader = await make_served()
    for body, message in MALFORMED:
        for _ in range(2):  # ten of such requests once rolled a healthy version back
            status, doc = await post(client, body)
            assert status == 400, (body if len(str(body)) < 300 else message, doc)
            error = doc["error"]
            assert message in error["message"], (message, error["message"])
            assert error["type"] == "invalid_request_error"
    assert loader.calls == 0 and server.metrics() == {}  # the model was never touched
    monitor = RollbackMonitor(healthy, server.metrics, HealthLimits(min_requests=1))
    assert monitor.check() == []
    assert server.refused["bad_request"] == 2 * len(MALFORMED)
    # Well-formed tool calls (OpenAI string arguments) are served.
    status, doc = await post(client, {"messages": AGENTIC, "max_tokens": 2})
    assert status == 200 and doc["sam_version"] == "v1.0.0"


async def test_template_errors_are_the_clients(tiny_model: Path) -> None:
    """A body that reaches rendering unchecked still gets a BadRequest (400), not a 503/500."""
    limit = PromptLimit(tiny_model)
    bad = [{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": "[]"}}]}]
    with pytest.raises(BadRequest, match=r"cannot be rendered.*not a JSON object"):
        limit.prompt_ids([HELLO[0], *bad], 8)


def _value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["null", "bool", "int", "float", "str", "str", "list", "dict"]
    kind = rng.choice(kinds if depth < 4 else kinds[:6])
    if kind == "null":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([-1, 0, 1, 2, 7, 4097, 2**63, -(10**30)])
    if kind == "float":
        return rng.choice([0.5, -3.25, 1e308, 2.0])
    if kind == "str":
        noise = "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(8))
        words = ["", "hi", "user", "assistant", "tool", "function", "text", "\x00", "\ud800"]
        return rng.choice([*words, "é☃🙂", "x" * rng.choice([1, 300, 5000]), noise])
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randrange(0, 4))]
    keys = ["role", "content", "tool_calls", "function", "name", "arguments", "type", "text", "id"]
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randrange(0, 4))}


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in `doc`, for mutation."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        item = stack.pop()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in list(pairs):
            out.append((item, key))
            if isinstance(child, (dict, list)):
                stack.append(child)
    return out


def fuzz_body(rng: random.Random) -> bytes:
    """A random JSON body, garbage, or a valid agentic body with one to three mutations."""
    r = rng.random()
    if r < 0.15:
        return json.dumps(_value(rng)).encode()
    if r < 0.2:
        good = json.dumps({"messages": AGENTIC}).encode()
        return rng.choice([good[: rng.randrange(len(good))], bytes(rng.randbytes(40)), b"{" * 5000])
    body: dict[str, Any] = {"messages": json.loads(json.dumps(AGENTIC)), "max_tokens": 2}
    for _ in range(rng.randrange(1, 4)):
        container, key = rng.choice(_slots(body))
        roll = rng.random()
        if roll < 0.7:
            container[key] = _value(rng)
        elif roll < 0.85 and isinstance(container, dict):
            del container[key]
        elif isinstance(container, dict):
            container[rng.choice(["tool_calls", "stream", "n", "top_p", "model"])] = _value(rng)
    tokens = body.get("max_tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool) and 1 <= tokens <= 4096:
        body["max_tokens"] = min(tokens, 3)  # keep the accepted ones quick
    elif "max_tokens" not in body:
        body["max_completion_tokens"] = 2
    return json.dumps(body).encode()


async def test_fuzzed_bodies_give_no_5xx_and_no_rollback(
    make_served: Any, healthy: Versions
) -> None:
    client, server, _ = await make_served()
    rng = random.Random(20261203)
    statuses: dict[int, int] = {}
    for _ in range(400):
        status, doc = await post(client, fuzz_body(rng))
        statuses[status] = statuses.get(status, 0) + 1
        assert status < 500, doc
        if status != 200:
            assert doc["error"]["message"] and doc["error"]["type"] == "invalid_request_error"
    assert statuses.get(200, 0) >= 10 and statuses.get(400, 0) >= 200, statuses
    windows = server.metrics()
    assert sum(w.requests for w in windows.values()) == statuses[200]
    assert all(w.errors == 0 for w in windows.values())
    monitor = RollbackMonitor(healthy, server.metrics, HealthLimits(min_requests=1))
    assert monitor.check() == []
    current = healthy.current()
    assert current is not None and current.version == "v1.0.0"


async def test_a_damaged_adapter_still_counts_as_its_versions_error(
    make_served: Any, healthy: Versions
) -> None:
    client, server, _ = await make_served()
    adapter = Path(healthy.get("v1.0.0").adapter_path) / "adapters.safetensors"
    adapter.write_bytes(b"rot")
    for body, _ in MALFORMED[:5]:  # interleaved client mistakes are not counted
        assert (await post(client, body))[0] == 400
        status, doc = await post(client, {"messages": HELLO, "max_tokens": 2})
        assert status == 500 and doc["error"]["type"] == "server_error"
    window = server.metrics()["v1.0.0"]
    assert (window.requests, window.errors) == (5, 5)
    [action] = RollbackMonitor(healthy, server.metrics, HealthLimits(min_requests=5)).check()
    assert (action.kind, action.version, action.to_version) == ("rollback", "v1.0.0", "v1.0.1")
