"""A teacher behind any OpenAI-compatible chat endpoint, through the official `openai` SDK.

Works with Ollama, llama.cpp's server, vLLM, a hosted API or SAM Brain's own `/v1`. The SDK does
the retrying (429, 5xx, connection errors, with backoff and `retry-after`); we turn what is left
into one-line `TeacherError`s that name the server, never the key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sam_brain.config import TeacherConfig
from sam_brain.errors import TeacherError
from sam_brain.protocols import Teacher, TeacherReply, TeacherRequest
from teachers.common import api_key

if TYPE_CHECKING:
    import openai

# Local servers need no key, but the SDK insists on one; this placeholder is sent instead.
_NO_KEY = "sam-brain-no-key"


class OpenAITeacher:
    """`Teacher` over `POST {base_url}/chat/completions`."""

    name = "openai"

    def __init__(self, config: TeacherConfig, client: openai.OpenAI | None = None) -> None:
        if not config.base_url and client is None:
            raise TeacherError(
                "teacher 'openai': set teacher.base_url (e.g. http://127.0.0.1:11434/v1)"
            )
        self.config = config
        self.model = config.model
        if client is None:
            import openai

            # Only a remote API needs a key; a local server gets the placeholder.
            key = api_key(config, "OPENAI_API_KEY", required=False) or _NO_KEY
            client = openai.OpenAI(
                base_url=config.base_url,
                api_key=key,
                max_retries=config.max_retries,
                timeout=config.timeout_seconds,
            )
        self.client = client

    def ask(self, request: TeacherRequest) -> TeacherReply:
        import openai

        messages: list[Any] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.extend(request.messages)
        try:
            out = self.client.chat.completions.create(
                model=self.model,
                messages=messages,
                max_tokens=request.max_tokens or self.config.max_output_tokens,
                temperature=request.temperature,
            )
        except openai.APIStatusError as err:
            raise TeacherError(
                f"teacher at {self.config.base_url}: HTTP {err.status_code} for model {self.model!r}"
            ) from None
        except openai.APITimeoutError:
            raise TeacherError(
                f"teacher at {self.config.base_url}: no answer within"
                f" {self.config.timeout_seconds:g} s"
            ) from None
        except openai.APIConnectionError:
            raise TeacherError(f"teacher at {self.config.base_url}: cannot connect") from None
        if not out.choices:
            raise TeacherError(f"teacher at {self.config.base_url}: answer without choices")
        choice = out.choices[0]
        usage = out.usage
        cached = 0
        if usage is not None and usage.prompt_tokens_details is not None:
            cached = usage.prompt_tokens_details.cached_tokens or 0
        return TeacherReply(
            text=choice.message.content or "",
            model=out.model or self.model,
            input_tokens=(usage.prompt_tokens - cached) if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
            cache_read_tokens=cached,
            stop_reason=choice.finish_reason or "",
            key=request.key,
        )


def _check(t: type[OpenAITeacher]) -> type[Teacher]:
    return t


_check(OpenAITeacher)
