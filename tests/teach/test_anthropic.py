"""The Anthropic teacher: the real `anthropic` SDK against a local server speaking its wire format."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from sam_brain.config import TeacherConfig
from sam_brain.dev.teacher_wire import Wire, serve
from sam_brain.errors import TeacherError
from sam_brain.protocols import TeacherRequest
from teachers.anthropic_api import AnthropicTeacher

KEY = "sk-ant-test-Zq9XvK2mW7pL4rT8yB3nC6dF1gH5jK0s"


def echo(body: dict[str, Any]) -> str:
    return "answer to: " + str(body["messages"][-1]["content"])


def teacher(url: str, **kw: Any) -> AnthropicTeacher:
    cfg = TeacherConfig(provider="anthropic", model="claude-test", base_url=url, **kw)
    return AnthropicTeacher(cfg)


def ask(t: AnthropicTeacher, text: str, system: str = "") -> Any:
    return t.ask(
        TeacherRequest(messages=[{"role": "user", "content": text}], system=system, key="k1")
    )


def test_missing_key_is_one_line_naming_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(TeacherError) as err:
        teacher("http://127.0.0.1:9")
    assert "$ANTHROPIC_API_KEY" in str(err.value) and "\n" not in str(err.value)
    monkeypatch.setenv("MY_KEY", "")
    with pytest.raises(TeacherError, match=r"\$MY_KEY"):
        teacher("http://127.0.0.1:9", api_key_env="MY_KEY")


def test_streamed_answer_with_cached_system_and_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with serve(Wire(echo, key=KEY)) as wire:
        t = teacher(wire.url)
        system = "You write examples. " * 50
        first = ask(t, "one", system)
        second = ask(t, "two", system)
    assert wire.bad_keys == 0
    assert first.text == "answer to: one" and second.text == "answer to: two"
    assert first.key == "k1" and first.model == "claude-test" and first.stop_reason == "end_turn"
    # The system prompt went as one block marked for caching, and the answers were streamed.
    sent = wire.bodies[0]
    assert sent["stream"] is True
    assert sent["system"] == [
        {"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}
    ]
    # Usage: the first call wrote the cache, the second read it.
    assert first.cache_write_tokens == len(system) // 4 and first.cache_read_tokens == 0
    assert second.cache_read_tokens == len(system) // 4 and second.cache_write_tokens == 0
    assert second.input_tokens == len("two") // 4
    assert second.output_tokens == len("answer to: two") // 4


def test_retries_429_529_and_overloaded_in_stream(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    caplog.set_level(logging.DEBUG)
    with serve(Wire(echo, script=["429", "529", "overloaded", "529"], key=KEY)) as wire:
        t = teacher(wire.url, max_retries=4)
        started = time.monotonic()
        reply = ask(t, "hello")
        took = time.monotonic() - started
    assert reply.text == "answer to: hello"
    assert wire.failures == ["429", "529", "overloaded", "529"]
    assert wire.calls == 5  # four failures, then the answer
    assert t.stream_retries == 1  # the SDK retried the HTTP ones, we retried the in-stream one
    assert took >= 0.6  # three retry-after waits of 0.2 s were honoured
    assert KEY not in caplog.text


def test_gives_up_with_one_line_error_without_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with serve(Wire(echo, script=["529"] * 3, key=KEY)) as wire:
        t = teacher(wire.url, max_retries=2)
        with pytest.raises(TeacherError) as err:
            ask(t, "hello")
    assert wire.calls == 3
    msg = str(err.value)
    assert "529" in msg and "overloaded_error" in msg and KEY not in msg and "\n" not in msg
    assert err.value.__cause__ is None


def test_message_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with serve(Wire(echo, key=KEY)) as wire:
        t = teacher(wire.url)
        reqs = [
            TeacherRequest(messages=[{"role": "user", "content": f"q{i}"}], system="S", key=f"r{i}")
            for i in range(3)
        ]
        batch_id = t.submit_batch(reqs)
        assert t.batch_status(batch_id) == "in_progress"
        assert t.batch_status(batch_id) == "ended"
        results = list(t.batch_results(batch_id))
    assert [(k, r.text if r else None, why) for k, r, why in results] == [
        (f"r{i}", f"answer to: q{i}", "") for i in range(3)
    ]
    assert wire.batches[batch_id][0]["params"]["system"][0]["cache_control"] == {
        "type": "ephemeral"
    }


def test_a_stream_cut_mid_answer_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with serve(Wire(echo, script=["drop"], key=KEY)) as wire:
        t = teacher(wire.url)
        assert ask(t, "hello").text == "answer to: hello"
    assert wire.failures == ["drop"] and t.stream_retries == 1
    with serve(Wire(echo, script=["drop"] * 2, key=KEY)) as wire:
        t = teacher(wire.url, max_retries=1)
        with pytest.raises(TeacherError, match="connection lost mid-answer"):
            ask(t, "hello")


def test_a_key_pasted_into_api_key_env_is_refused_without_repeating_it() -> None:
    with pytest.raises(TeacherError) as err:
        teacher("http://127.0.0.1:9", api_key_env=KEY)
    assert KEY not in str(err.value) and "environment variable" in str(err.value)
    from teachers.openai_api import OpenAITeacher

    cfg = TeacherConfig(provider="openai", base_url="http://127.0.0.1:9", api_key_env=KEY)
    with pytest.raises(TeacherError) as err2:
        OpenAITeacher(cfg)
    assert KEY not in str(err2.value)
