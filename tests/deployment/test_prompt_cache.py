"""The resident model's prompt cache: follow-ups prefill only new tokens, answers stay the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deployment.resident import ResidentModel

HELLO = [{"role": "user", "content": "How do I list the files in a folder?"}]


def test_a_repeated_prompt_reuses_its_kv_cache_and_answers_the_same(
    tiny_model: Path, lora_adapters: list[Path]
) -> None:
    cached, plain = ResidentModel(tiny_model), ResidentModel(tiny_model, prompt_cache_mb=0)
    first = cached.generate(HELLO, 8)
    again = cached.generate(HELLO, 8)
    assert first.cached_tokens == 0
    assert again.cached_tokens == again.prompt_tokens - 1  # only the last token is recomputed
    assert again.text == first.text == plain.generate(HELLO, 8).text
    assert plain.generate(HELLO, 8).cached_tokens == 0
    # The next turn of the conversation starts from the cache of the first.
    turn: Any = [*HELLO, {"role": "assistant", "content": first.text}]
    turn.append({"role": "user", "content": "And recursively?"})
    follow = cached.generate(turn, 8)
    assert 0 < follow.cached_tokens < follow.prompt_tokens
    assert follow.text == plain.generate(turn, 8).text
    assert follow.seconds > 0 and follow.completion_tokens == 8


def test_caches_are_kept_per_adapter_and_dropped_with_a_reread_adapter(
    tiny_model: Path, lora_adapters: list[Path]
) -> None:
    a0, a1 = str(lora_adapters[0]), str(lora_adapters[1])
    resident = ResidentModel(tiny_model, cache_size=1)
    base = resident.generate(HELLO, 8)
    resident.use(a0)
    tuned = resident.generate(HELLO, 8)
    assert tuned.cached_tokens == 0 and tuned.text != base.text  # the base's cache is not a0's
    again = resident.generate(HELLO, 8)
    assert again.cached_tokens > 0 and again.text == tuned.text
    resident.use(None)
    assert resident.generate(HELLO, 8).cached_tokens > 0  # the base's cache is still there
    resident.use(a1)  # cache_size 1: a0's weights are evicted and read again below
    resident.use(a0)
    reread = resident.generate(HELLO, 8)
    assert reread.cached_tokens == 0 and reread.text == tuned.text
