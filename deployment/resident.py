"""One base model kept in memory, with LoRA adapters swapped in and out in place.

`ResidentModel` loads the base once (mlx-lm) and swaps LoRA adapters in place: the LoRA layers
are rebuilt only when an adapter's structure (layers, keys, rank, scale) differs from the one
applied, otherwise only the `lora_a`/`lora_b` tensors are loaded (`model.load_weights(...,
strict=False)`), so a swap costs milliseconds, not a model load (mlx_lm.server reloads the whole
model instead). Recently used adapters stay cached in memory. The KV caches of recent prompts stay
too (mlx-lm's `LRUPromptCache`, keyed by the adapter applied, bounded in entries and bytes), so a
request that repeats or extends an earlier conversation only prefills its new tokens, as
mlx_lm.server does. A long prompt is prefilled in `prefill_step_size` chunks and the
`cancelled` callback is polled after each chunk and each token, so a client that leaves frees the
model within one chunk; `halt` (the daemon's shutdown) makes every later step raise `Halted`, so
work queued on the model without a callback (the evaluation gate) stops as quickly. Serving (`deployment.serving`), the evaluation gate and
the benchmarks all share one instance.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest, ModelUnavailable, SamBrainError
from sam_brain.protocols import Message
from sam_brain.render import prompt_ids


class Halted(SamBrainError):
    """The model was halted (the daemon is stopping); the work asked of it was not done."""

    http_status = 503


class _Stopped(Exception):
    """Raised from the prefill progress callback to stop a cancelled prefill."""


@dataclass
class Completion:
    """One generation: text, why it stopped ("stop": end of turn, "length": budget) and sizes."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float = 0.0  # generation wall time, prefill included
    cached_tokens: int = 0  # prompt tokens whose KV cache was reused


class ResidentModel:
    """A base model kept in memory, with LoRA adapters swapped in and out in place."""

    def __init__(
        self,
        base_model: str | Path,
        loader: Callable[[str], tuple[Any, Any]] | None = None,
        cache_size: int = 4,
        prompt_cache_entries: int = 8,
        prompt_cache_mb: float = 256.0,
        prefill_step_size: int = 512,
    ) -> None:
        """Load the base model (once).

        Args:
            base_model: A local mlx-lm model directory.
            loader: `mlx_lm.load`-like function; injectable so tests can count base loads.
            cache_size: Adapters whose weights are kept in memory (least recently used dropped).
            prompt_cache_entries: Conversations whose KV cache is kept (0: no prompt cache).
            prompt_cache_mb: Bound on the kept KV caches' size (0: no prompt cache).
            prefill_step_size: Prompt tokens per prefill step (cancellation is polled between).

        Raises:
            ModelUnavailable: The base model cannot be loaded.
        """
        from mlx_lm import load
        from mlx_lm.models.cache import LRUPromptCache

        self.base_model = str(base_model)
        self.prefill_step_size = prefill_step_size
        self.halted = False
        try:
            loaded: Any = (loader or load)(self.base_model)
        except (OSError, ValueError) as err:
            raise ModelUnavailable(f"cannot load base model {self.base_model}: {err}") from err
        self.model: Any = loaded[0]
        self.tokenizer: Any = loaded[1]
        self.model.eval()
        self.applied: str | None = None
        self.last_swap_ms = 0.0
        self._structure: str | None = None
        self._cache: OrderedDict[str, tuple[dict[str, Any], dict[str, Any], str]] = OrderedDict()
        self._cache_size = cache_size
        self._loads = 0  # numbers adapter reads, so a re-read adapter never meets stale KV caches
        self._applied_key = ""
        self._prompts: Any = (
            LRUPromptCache(prompt_cache_entries, int(prompt_cache_mb * 2**20))
            if prompt_cache_entries > 0 and prompt_cache_mb > 0
            else None
        )

    def use(self, adapter_dir: str | None) -> float:
        """Apply the adapter in `adapter_dir` (None: the bare base); returns the swap time in ms."""
        if adapter_dir == self.applied:
            return 0.0
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm.tuner.utils import linear_to_lora_layers

        start = time.perf_counter()
        self.applied = None  # until the swap completes, nothing is known to be applied
        self._applied_key = key = ""
        try:
            if adapter_dir is not None:
                config, weights, key = self._adapter(adapter_dir)
                structure = json.dumps(
                    [config["num_layers"], config["lora_parameters"], config["fine_tune_type"]],
                    sort_keys=True,
                )
                if structure != self._structure or not self._fits(weights):
                    self._strip()
                    linear_to_lora_layers(
                        self.model,
                        int(config["num_layers"]),
                        config["lora_parameters"],
                        use_dora=config["fine_tune_type"] == "dora",
                    )
                    self._structure = structure
                    if not self._fits(weights):
                        raise BadRequest(f"adapter {adapter_dir} does not fit {self.base_model}")
                self.model.load_weights(list(weights.items()), strict=False)
                self.model.eval()  # new LoRA modules start in training mode (dropout on)
            else:
                self._strip()
        except Exception:
            self._strip()  # never leave a half-swapped adapter behind
            raise
        mx.eval(dict(tree_flatten(self.model.parameters())))
        self.applied = adapter_dir
        self._applied_key = key
        self.last_swap_ms = (time.perf_counter() - start) * 1000
        return self.last_swap_ms

    def halt(self) -> None:
        """Stop all work for good: generations and scoring from now on raise `Halted`."""
        self.halted = True

    def _check_halted(self) -> None:
        if self.halted:
            raise Halted("the model is stopping (the daemon is shutting down)")

    def sample_nll(self, ids: list[int], mask: list[int]) -> tuple[float, int]:
        """Summed NLL of the supervised tokens of one encoded row, and how many there are."""
        self._check_halted()
        import mlx.core as mx
        import mlx.nn as nn
        import numpy as np

        logits = self.model(mx.array(ids[:-1])[None])[0]
        weights = mx.array(mask[1:], dtype=mx.float32)
        ce = nn.losses.cross_entropy(logits.astype(mx.float32), mx.array(ids[1:]))
        return float(np.asarray((ce * weights).sum())), int(sum(mask[1:]))

    def generate(
        self,
        messages: list[Message],
        max_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        on_text: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
        prompt: list[int] | None = None,
    ) -> Completion:
        """Complete `messages` (chat template applied) with the adapter currently in use.

        Args:
            messages: The conversation so far.
            max_tokens: Token budget of the answer.
            temperature: 0 is greedy.
            top_p: Nucleus sampling share (1: off).
            on_text: Called with each decoded text segment, for streaming.
            cancelled: Polled between prefill chunks and tokens; True stops early
                (finish_reason "cancelled").
            prompt: The rendered prompt's ids when the caller has them (`prompt_ids(messages)`).
        """
        from mlx_lm import stream_generate
        from mlx_lm.sample_utils import make_sampler

        def stop() -> bool:
            # A caller that can stop (a client request) stops; others (the gate) raise Halted.
            if cancelled is not None and cancelled():
                return True
            self._check_halted()
            return False

        if stop():  # stopped while it waited for the worker
            return Completion("", "cancelled", len(prompt or ()), 0)
        start = time.perf_counter()
        prompt = prompt_ids(self.tokenizer, messages) if prompt is None else prompt
        cache, rest = self._cached(prompt)
        sampler = make_sampler(temp=temperature, top_p=top_p if top_p < 1.0 else 0.0)
        parts: list[str] = []
        tokens: list[int] = []
        finish = "length"

        def prefilled(done: int, total: int) -> None:
            if done and stop():
                raise _Stopped

        try:
            for response in stream_generate(
                self.model,
                self.tokenizer,
                rest,
                max_tokens=max_tokens,
                sampler=sampler,
                prompt_cache=cache,
                prefill_step_size=self.prefill_step_size,
                prompt_progress_callback=prefilled,
            ):
                if response.text:
                    parts.append(response.text)
                    if on_text is not None:
                        on_text(response.text)
                tokens.append(int(response.token))
                finish = response.finish_reason or finish
                if stop():
                    finish = "cancelled"
                    break
        except _Stopped:  # during prefill: the cache is partial, so it is not kept
            seconds = time.perf_counter() - start
            return Completion("", "cancelled", len(prompt), 0, seconds, len(prompt) - len(rest))
        self._keep(prompt + tokens, cache)
        seconds = time.perf_counter() - start
        cached = len(prompt) - len(rest)
        return Completion("".join(parts), finish, len(prompt), len(tokens), seconds, cached)

    def _cached(self, prompt: list[int]) -> tuple[list[Any], list[int]]:
        """A KV cache for `prompt` and the tokens it still has to prefill (a fresh cache: all)."""
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        if self._prompts is not None:
            cache, rest = self._prompts.fetch_nearest_cache(self._applied_key, prompt)
            if cache is not None and not rest:
                # Cached in full: recompute the last token, whose logits start the answer.
                if can_trim_prompt_cache(cache):
                    trim_prompt_cache(cache, 1)
                    return cache, prompt[-1:]
            elif cache is not None:
                return cache, rest
        return make_prompt_cache(self.model), prompt

    def _keep(self, tokens: list[int], cache: list[Any]) -> None:
        """Keep the KV cache of a finished generation for the next turn of the conversation."""
        from mlx_lm.models.cache import can_trim_prompt_cache

        if self._prompts is None or not cache or not can_trim_prompt_cache(cache):
            return
        held = int(cache[0].offset)  # tokens the cache holds: the prompt and the answer so far
        if 0 < held <= len(tokens):
            self._prompts.insert_cache(self._applied_key, tokens[:held], cache)

    def _adapter(self, adapter_dir: str) -> tuple[dict[str, Any], dict[str, Any], str]:
        if adapter_dir in self._cache:
            self._cache.move_to_end(adapter_dir)
            return self._cache[adapter_dir]
        import mlx.core as mx

        path = Path(adapter_dir)
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            tensors: Any = mx.load(str(path / "adapters.safetensors"))
            weights = dict(tensors)
        except (OSError, ValueError) as err:
            raise BadRequest(f"cannot read adapter {adapter_dir}: {err}") from err
        config.setdefault("fine_tune_type", "lora")
        if config["fine_tune_type"] not in ("lora", "dora"):
            raise BadRequest(f"adapter {adapter_dir}: {config['fine_tune_type']} is not an adapter")
        self._loads += 1
        entry = (config, weights, f"{adapter_dir}#{self._loads}")
        self._cache[adapter_dir] = entry
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return entry

    def _fits(self, weights: dict[str, Any]) -> bool:
        """The adapter names exactly the LoRA tensors the model has, with the same shapes."""
        from mlx.utils import tree_flatten

        flat: Any = tree_flatten(self.model.parameters())
        params = {k: v for k, v in flat if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
        return set(params) == set(weights) and all(
            params[k].shape == w.shape for k, w in weights.items()
        )

    def _strip(self) -> None:
        """Put the original layers back (also DoRA ones, which mlx-lm's remove_lora_layers skips)."""
        from mlx.utils import tree_unflatten

        originals = [
            (name, getattr(m, "linear", None) or getattr(m, "embedding", None))
            for name, m in self.model.named_modules()
            if hasattr(m, "lora_a")
        ]
        if originals:
            self.model.update_modules(tree_unflatten(originals))
        self._structure = None
