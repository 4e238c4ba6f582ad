"""A teacher behind Anthropic's Messages API, through the official `anthropic` SDK.

The shared `system` prompt is sent as one content block marked `cache_control: ephemeral`, so a
campaign pays full price for its instructions and schema once and the cache-read price after.
Answers are streamed (long answers never hit the non-streaming time limit) and usage, cache
reads and writes included, is mapped onto `TeacherReply`.

Retries: the SDK retries 408/409/429/5xx (529 "overloaded" included) with exponential backoff and
honours `retry-after`, `teacher.max_retries` times. An `overloaded_error` that arrives inside a
stream (HTTP 200, then an SSE `error` event) or a connection cut mid-stream is not retried by
the SDK: `ask` retries those, `teacher.max_retries` times with the same backoff.
Large campaigns go through the Message Batches API (`submit_batch`, `batch_status`,
`batch_results`), at half the price.
"""

from __future__ import annotations

import functools
import importlib
import random
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sam_brain.config import TeacherConfig
from sam_brain.errors import TeacherError
from sam_brain.protocols import Teacher, TeacherReply, TeacherRequest
from teachers.common import api_key

if TYPE_CHECKING:
    import anthropic
    from anthropic.types import Message

# Errors a stream may end with after a 200 that are worth another try.
_TRANSIENT = {"overloaded_error", "rate_limit_error", "api_error"}


@functools.cache
def _transport_errors() -> tuple[type[Exception], ...]:
    """The SDK's HTTP library's transport errors: a stream cut mid-answer raises them unwrapped."""
    for name in ("httpx2", "httpx"):  # which one depends on the SDK's version
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        return (module.TransportError,)
    return ()


def error_type(err: Exception) -> str:
    """The `error.type` of an API error body ("overloaded_error", ...), "" when there is none."""
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return str(inner.get("type") or "")
    return ""


def to_reply(message: Message, key: str = "") -> TeacherReply:
    usage = message.usage
    return TeacherReply(
        text="".join(b.text for b in message.content if b.type == "text"),
        model=message.model,
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
        cache_write_tokens=usage.cache_creation_input_tokens or 0,
        stop_reason=message.stop_reason or "",
        key=key,
    )


class AnthropicTeacher:
    """`Teacher` over `POST {base_url}/v1/messages` (streamed), plus the Message Batches API."""

    name = "anthropic"

    def __init__(self, config: TeacherConfig, client: anthropic.Anthropic | None = None) -> None:
        self.config = config
        self.model = config.model
        self.where = config.base_url or "api.anthropic.com"
        self.stream_retries = (
            0  # in-stream overloaded errors retried here (the SDK counts the rest)
        )
        if client is None:
            import anthropic

            client = anthropic.Anthropic(
                api_key=api_key(config, "ANTHROPIC_API_KEY", required=True),
                base_url=config.base_url or None,
                max_retries=config.max_retries,
                timeout=config.timeout_seconds,
            )
        self.client = client

    def params(self, request: TeacherRequest) -> dict[str, Any]:
        """The Messages API body for `request` (system messages folded into the cached block).

        No `temperature`: the Messages API of SDK 2.x takes no sampling parameters; a campaign
        gets its variety from distinct prompts.
        """
        system = [request.system] if request.system else []
        messages: list[dict[str, Any]] = []
        for m in request.messages:
            text = str(m.get("content") or "")
            if m.get("role") == "system":
                system.append(text)
            else:
                messages.append({"role": m.get("role", "user"), "content": text})
        out: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens or self.config.max_output_tokens,
            "messages": messages,
        }
        if system:
            out["system"] = [
                {
                    "type": "text",
                    "text": "\n\n".join(system),
                    "cache_control": {"type": "ephemeral"},
                }
            ]
        return out

    def ask(self, request: TeacherRequest) -> TeacherReply:
        import anthropic

        params = self.params(request)
        attempt = 0
        while True:
            try:
                with self.client.messages.stream(**params) as stream:
                    return to_reply(stream.get_final_message(), request.key)
            except anthropic.APIStatusError as err:
                kind = error_type(err)
                # The SDK already retried HTTP-level failures; only in-stream ones are ours.
                in_stream = err.status_code < 400
                if in_stream and kind in _TRANSIENT and attempt < self.config.max_retries:
                    attempt = self._backoff(attempt)
                    continue
                raise TeacherError(
                    f"teacher at {self.where}: HTTP {err.status_code}"
                    f"{' ' + kind if kind else ''} for model {self.model!r}"
                ) from None
            except anthropic.APITimeoutError:
                raise TeacherError(
                    f"teacher at {self.where}: no answer within {self.config.timeout_seconds:g} s"
                ) from None
            except anthropic.APIConnectionError:
                raise TeacherError(f"teacher at {self.where}: cannot connect") from None
            except _transport_errors() as err:  # the connection died mid-answer
                if attempt < self.config.max_retries:
                    attempt = self._backoff(attempt)
                    continue
                raise TeacherError(
                    f"teacher at {self.where}: connection lost mid-answer ({type(err).__name__})"
                ) from None

    def _backoff(self, attempt: int) -> int:
        """Sleep before retry `attempt + 1` (exponential, jittered like the SDK's); count it."""
        self.stream_retries += 1
        time.sleep(min(8.0, 0.5 * 2 ** (attempt + 1)) * (1 - 0.25 * random.random()))
        return attempt + 1

    # -- Message Batches ------------------------------------------------------------------------

    def submit_batch(self, requests: list[TeacherRequest]) -> str:
        """Send `requests` as one batch (custom ids are the request keys); the batch id."""
        import anthropic

        body: Any = [{"custom_id": r.key, "params": self.params(r)} for r in requests]
        try:
            return self.client.messages.batches.create(requests=body).id
        except anthropic.APIStatusError as err:
            raise TeacherError(
                f"teacher at {self.where}: batch refused, HTTP {err.status_code}"
            ) from None
        except anthropic.APIConnectionError:
            raise TeacherError(f"teacher at {self.where}: cannot connect") from None

    def batch_status(self, batch_id: str) -> str:
        """ "in_progress", "canceling" or "ended"."""
        import anthropic

        try:
            return str(self.client.messages.batches.retrieve(batch_id).processing_status)
        except anthropic.APIError:
            raise TeacherError(f"teacher at {self.where}: cannot read batch {batch_id}") from None

    def batch_results(self, batch_id: str) -> Iterator[tuple[str, TeacherReply | None, str]]:
        """(key, reply, "") per succeeded request; (key, None, why) per failed one."""
        import anthropic

        try:
            for entry in self.client.messages.batches.results(batch_id):
                result = entry.result
                if result.type == "succeeded":
                    yield entry.custom_id, to_reply(result.message, entry.custom_id), ""
                elif result.type == "errored":
                    yield entry.custom_id, None, result.error.error.type or "errored"
                else:
                    yield entry.custom_id, None, result.type
        except anthropic.APIError:
            raise TeacherError(
                f"teacher at {self.where}: cannot read the results of batch {batch_id}"
            ) from None


def _check(t: type[AnthropicTeacher]) -> type[Teacher]:
    return t


_check(AnthropicTeacher)
