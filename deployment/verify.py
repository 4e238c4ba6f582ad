"""Check an exported artifact by loading it in its own runtime and comparing it with the source.

The source is mlx-lm running the base with the version's adapter. For one fixed chat prompt it
produces greedy tokens (stopping at end-of-sequence) and its logits at every generated position
(`reference`). Each artifact is loaded by the runtime it is for (mlx-lm, transformers + peft,
llama-cpp-python) as a `Runtime`, generates greedily with that runtime's own decoding loop from the same token
ids, and is scored on the reference sequence (teacher forcing). `compare` applies a `Rule`: unquantized
artifacts must produce the identical tokens (a divergence is only tolerated at a near-tie of the
source, where float rounding may legitimately flip the argmax) and sit closer to the adapted
model than to the bare base, so an export that silently dropped the adapter fails; quantized
ones, made from an f16 file that passed, must keep their logit error within a documented bound.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sam_brain.errors import BackendUnavailable, ExportFailed

PROMPT = [
    {"role": "system", "content": "You are a helpful coding assistant."},
    {"role": "user", "content": "Write a Python function that returns the sum of a list."},
]
MAX_NEW_TOKENS = 16

Forward = Callable[[list[int]], np.ndarray]
"""Token ids in, float32 logits `(len(ids), vocab)` out."""
Generate = Callable[[list[int], frozenset[int]], list[int]]
"""Prompt ids and end-of-sequence ids in, the runtime's own greedy continuation out."""


@dataclass
class Runtime:
    """A loaded artifact: its runtime's name, a teacher-forced forward and greedy generation.

    Without `generate`, greedy tokens are recomputed from `forward` (for hand-written fakes).
    """

    name: str
    forward: Forward
    generate: Generate | None = None


@dataclass(frozen=True)
class Rule:
    """What an artifact must show to pass.

    Unquantized (`max_rel_err` None): greedy tokens identical, except a flip where the source's
    top-2 logit margin is below `tie` or the source's own `tie_floor` (float rounding may
    legitimately decide a near-tie), and
    logits nearer the adapted model than the bare base. Quantized (made from a verified f16
    file): logit error at most `max_rel_err` of the spread of the source's logits (RMS over RMS);
    top-1 agreement and the identical prefix are reported, not required, because they hinge on
    how many near-ties the prompt happens to hit.
    """

    name: str
    tie: float = 0.0
    max_rel_err: float | None = None


EXACT_F32 = Rule("identical tokens (f32)", tie=1e-3)
EXACT_F16 = Rule("identical tokens (f16)", tie=2e-2)
# Over 2x the largest error measured on the tiny models (docs/export.md: 0.025, 0.12, 0.22);
# a broken conversion (wrong tensors, rope or tokenizer) gives uncorrelated logits, about 1.4.
QUANT_RULES = {
    "f16": EXACT_F16,
    "q8_0": Rule("relative logit error <= 0.1 (q8_0)", max_rel_err=0.1),
    "q5_k_m": Rule("relative logit error <= 0.35 (q5_k_m)", max_rel_err=0.35),
    "q4_k_m": Rule("relative logit error <= 0.5 (q4_k_m)", max_rel_err=0.5),
}


@dataclass
class Reference:
    """The source model's behaviour on `PROMPT`."""

    prompt: list[int]
    tokens: list[int]  # greedy continuation, ending with an end-of-sequence id if one was reached
    logits: np.ndarray  # (len(tokens), vocab): source logits that chose each token
    base_logits: np.ndarray  # the same positions from the base without the adapter
    eos: frozenset[int]
    text: str  # the prompt as text, for runtimes that tokenize themselves
    tie_floor: float = 0.0  # near-tie margin the source's own precision (bf16/f16) imposes


# A 16-bit source rounds logits of size ~10-30 by ~0.05-0.1, so margins below this are ties.
HALF_PRECISION_TIE = 0.1


def reference(base_dir: Path, adapter_dir: Path) -> Reference:
    """Run the source (mlx-lm, base + adapter) and the bare base on the fixed prompt."""
    from mlx_lm import load

    model, wrapper = load(str(base_dir), adapter_path=str(adapter_dir))[:2]
    tokenizer: Any = wrapper
    prompt = list(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True))
    text = str(tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False))
    eos = frozenset(int(t) for t in tokenizer.eos_token_ids)
    source = mlx_runtime(model)
    assert source.generate is not None
    tokens = source.generate(prompt, eos)
    logits = source.forward(prompt + tokens)[len(prompt) - 1 : -1]
    del model, source
    gc.collect()
    base = mlx_runtime(load(str(base_dir))[0])
    base_logits = base.forward(prompt + tokens)[len(prompt) - 1 : -1]
    config = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
    tie_floor = HALF_PRECISION_TIE if dtype in ("bfloat16", "float16") else 0.0
    return Reference(prompt, tokens, logits, base_logits, eos, text, tie_floor)


def greedy(forward: Forward, prompt: list[int], eos: frozenset[int]) -> list[int]:
    """Greedy continuation of `prompt` by full recomputation (for runtimes without generate)."""
    out: list[int] = []
    for _ in range(MAX_NEW_TOKENS):
        token = int(np.argmax(forward(prompt + out)[-1]))
        out.append(token)
        if token in eos:
            break
    return out


def _until_eos(tokens: list[int], eos: frozenset[int]) -> list[int]:
    end = next((i for i, t in enumerate(tokens) if t in eos), len(tokens) - 1)
    return tokens[: end + 1]


def compare(artifact: str, runtime: Runtime, ref: Reference, rule: Rule) -> dict[str, Any]:
    """Score `runtime` against `ref`; raise ExportFailed when `rule` is not met.

    Returns:
        The measurements (JSON-ready): tokens identical, first divergence, top-1 agreement,
        logit distances to the source and to the bare base.
    """
    if runtime.generate is not None:
        tokens = runtime.generate(ref.prompt, ref.eos)
    else:
        tokens = greedy(runtime.forward, ref.prompt, ref.eos)
    logits = runtime.forward(ref.prompt + ref.tokens)[len(ref.prompt) - 1 : -1]
    agree = logits.argmax(-1) == np.array(ref.tokens)
    top2 = np.sort(ref.logits, axis=-1)[:, -2:]
    margins = top2[:, 1] - top2[:, 0]
    diverge = next(
        (i for i, (a, b) in enumerate(zip(tokens, ref.tokens, strict=False)) if a != b), None
    )
    if diverge is None and len(tokens) != len(ref.tokens):
        diverge = min(len(tokens), len(ref.tokens))
    to_source = _rms(logits - ref.logits)
    to_base = _rms(logits - ref.base_logits)
    rel_err = to_source / _rms(ref.logits - ref.logits.mean(axis=-1, keepdims=True))
    result: dict[str, Any] = {
        "artifact": artifact,
        "runtime": runtime.name,
        "rule": rule.name,
        "prompt_tokens": len(ref.prompt),
        "tokens": len(ref.tokens),
        "tokens_identical": diverge is None,
        "first_divergence": diverge,
        "top1_agreement": round(float(agree.mean()), 4),
        "relative_logit_error": round(rel_err, 6),
        "max_abs_logit_diff": round(float(np.abs(logits - ref.logits).max()), 6),
        "rms_to_source": round(to_source, 6),
        "rms_to_base": round(to_base, 6),
    }
    problems = []
    if rule.max_rel_err is None:
        # A flip is acceptable only where the source itself was nearly undecided.
        tie = max(rule.tie, ref.tie_floor)
        bad = [int(i) for i in np.flatnonzero(~agree) if margins[i] >= tie]
        if bad:
            problems.append(f"top-1 differs at confident positions {bad[:5]}")
        if diverge is not None and diverge < len(margins) and margins[diverge] >= tie:
            problems.append(f"greedy tokens diverge at position {diverge}")
        if to_source >= to_base:
            problems.append(
                f"logits are closer to the base without adapter (rms {to_base:.4g}) than to the"
                f" adapted model (rms {to_source:.4g}): the adapter is missing"
            )
    elif rel_err > rule.max_rel_err:
        problems.append(f"relative logit error {rel_err:.3f} > {rule.max_rel_err}")
    result["ok"] = not problems
    if problems:
        raise ExportFailed(
            f"{artifact} failed verification in {runtime.name}: " + "; ".join(problems)
        )
    return result


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


def mlx_runtime(model: Any) -> Runtime:
    """A loaded mlx-lm model; generation is mlx-lm's own greedy `generate_step`."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    def forward(ids: list[int]) -> np.ndarray:
        return np.array(model(mx.array([ids]))[0].astype(mx.float32))

    def generate(prompt: list[int], eos: frozenset[int]) -> list[int]:
        steps = generate_step(mx.array(prompt), model, max_tokens=MAX_NEW_TOKENS)
        out: list[int] = []
        for token, _ in steps:
            out.append(int(token))
            if out[-1] in eos:
                break
        return out

    return Runtime("mlx-lm", forward, generate)


def check_mlx(base_dir: Path, adapter_dir: Path, ref: Reference, artifact: str) -> dict[str, Any]:
    """Load an mlx-lm adapter folder with mlx-lm and compare."""
    from mlx_lm import load

    model = load(str(base_dir), adapter_path=str(adapter_dir))[0]
    return compare(artifact, mlx_runtime(model), ref, EXACT_F32)


def check_transformers(
    model_dir: Path, ref: Reference, artifact: str, peft_dir: Path | None = None
) -> dict[str, Any]:
    """Load a HF model folder (plus a PEFT adapter) with transformers and compare."""
    import torch
    from transformers import AutoModelForCausalLM

    # The checkpoint's own dtype: a float32 upcast of a 7B model would need 28 GB.
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto")
    runtime = "transformers"
    if peft_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(peft_dir))
        runtime = "transformers+peft"
    model.eval()

    def forward(ids: list[int]) -> np.ndarray:
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()  # type: ignore[no-any-return]

    def generate(prompt: list[int], eos: frozenset[int]) -> list[int]:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                eos_token_id=sorted(eos),
                pad_token_id=min(eos),
            )
        return _until_eos([int(t) for t in out[0, len(prompt) :]], eos)

    return compare(artifact, Runtime(runtime, forward, generate), ref, EXACT_F32)


def check_gguf(gguf: Path, ref: Reference, rule: Rule, lora: Path | None = None) -> dict[str, Any]:
    """Load a GGUF (plus a GGUF LoRA) with llama-cpp-python and compare.

    The GGUF's own tokenizer must turn the prompt text into the source's ids, because that is
    what llama.cpp, Ollama and LM Studio will feed the model.
    """
    try:
        import llama_cpp
    except ImportError as err:
        raise BackendUnavailable(
            "verifying a GGUF needs llama-cpp-python (pip install llama-cpp-python)"
        ) from err
    llm: Any = llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora else None,
        n_ctx=max(512, len(ref.prompt) + MAX_NEW_TOKENS + 8),
        logits_all=True,
        n_threads=max(1, min(4, _cpus())),
        seed=0,
        verbose=False,
    )
    try:
        ids = llm.tokenize(ref.text.encode("utf-8"), add_bos=False, special=True)
        if list(ids) != ref.prompt:
            raise ExportFailed(
                f"{gguf.name}: its tokenizer encodes the prompt differently from the source"
                f" ({len(ids)} vs {len(ref.prompt)} tokens)"
            )

        def forward(tokens: list[int]) -> np.ndarray:
            llm.reset()
            llm.eval(tokens)
            return np.array(llm.scores[: len(tokens)], dtype=np.float32)

        def generate(prompt: list[int], eos: frozenset[int]) -> list[int]:
            llm.reset()
            llm.eval(prompt)
            out: list[int] = []
            for _ in range(MAX_NEW_TOKENS):
                out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                if out[-1] in eos:
                    break
                llm.eval(out[-1:])
            return out

        name = f"{gguf.name} + {lora.name}" if lora else gguf.name
        runtime = Runtime(f"llama-cpp-python {llama_cpp.__version__}", forward, generate)
        return compare(name, runtime, ref, rule)
    finally:
        llm.close()


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
