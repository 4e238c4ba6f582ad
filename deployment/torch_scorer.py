"""The gate's model on torch (transformers + peft, the CUDA backend's stack), for machines without
mlx-lm: the same interface as `resident.ResidentModel` (`tokenizer`, `use`, `generate`,
`sample_nll`), so `deployment.evaluate` judges a candidate the same way on either stack.

Adapters are applied through their PEFT files (`peft/` of a torch-trained adapter, or a
conversion of mlx-lm's files, `backends.adapter_format.peft_files`); swapping unloads the LoRA
layers and wraps the base again, which costs a fraction of a second on the models we gate.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from deployment.resident import Completion
from sam_brain.errors import BadRequest, ModelUnavailable
from sam_brain.protocols import Message
from sam_brain.render import prompt_ids


def torch_available() -> bool:
    """transformers, peft and torch import: the torch gate can run."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


class TorchResident:
    """A base model on CPU (or CUDA) with one LoRA adapter applied at a time."""

    def __init__(self, base_model: str | Path) -> None:
        """Load the base model (float32 on CPU, bfloat16 on a GPU that has it).

        Raises:
            ModelUnavailable: The base model cannot be loaded.
        """
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.base_model = str(base_model)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        # bf16 halves a large base on a GPU; on CPU float32 is both exact and the fast path.
        cuda_bf16 = self.device == "cuda" and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if cuda_bf16 else torch.float32
        try:
            self.tokenizer: Any = AutoTokenizer.from_pretrained(self.base_model)
            model: Any = AutoModelForCausalLM.from_pretrained(self.base_model, dtype=dtype)
        except (OSError, ValueError) as err:
            raise ModelUnavailable(f"cannot load base model {self.base_model}: {err}") from err
        self.base: Any = model.to(self.device).eval()
        self.model: Any = self.base
        self.applied: str | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="sam-gate-")
        self._swaps = 0
        eos = model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, self.tokenizer.eos_token_id] if e is not None}

    def use(self, adapter_dir: str | None) -> float:
        """Apply the adapter in `adapter_dir` (None: the bare base); returns the swap time in ms."""
        if adapter_dir == self.applied:
            return 0.0
        from peft import PeftModel

        from backends.adapter_format import peft_files

        start = time.perf_counter()
        if self.model is not self.base:
            self.base = self.model.unload()  # the LoRA layers out, the base weights untouched
            self.model = self.base
        self.applied = None
        if adapter_dir is not None:
            self._swaps += 1
            scratch = Path(self._scratch.name) / str(self._swaps)
            try:
                files = peft_files(Path(adapter_dir), Path(self.base_model), scratch)
                self.model = PeftModel.from_pretrained(self.base, str(files)).eval()
            except (OSError, ValueError, KeyError, RuntimeError) as err:
                raise BadRequest(f"adapter {adapter_dir} does not load on torch: {err}") from err
        self.applied = adapter_dir
        return (time.perf_counter() - start) * 1000

    def sample_nll(self, ids: list[int], mask: list[int]) -> tuple[float, int]:
        """Summed NLL of the supervised tokens of one encoded row, and how many there are."""
        import torch

        with torch.inference_mode():
            inputs = torch.tensor([ids[:-1]], device=self.device)
            logits = self.model(input_ids=inputs).logits[0].float()
            ce = torch.nn.functional.cross_entropy(
                logits, torch.tensor(ids[1:], device=self.device), reduction="none"
            )
            weights = torch.tensor(mask[1:], dtype=torch.float32, device=self.device)
            return float((ce * weights).sum()), int(sum(mask[1:]))

    def generate(self, messages: list[Message], max_tokens: int, **_: Any) -> Completion:
        """Greedy answer to `messages` (chat template applied) with the adapter in use."""
        import torch

        start = time.perf_counter()
        prompt = prompt_ids(self.tokenizer, messages)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=torch.tensor([prompt], device=self.device),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=self.device),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=sorted(self.eos_ids),
                pad_token_id=self.tokenizer.pad_token_id or min(self.eos_ids),
            )
        tokens = [int(t) for t in out[0, len(prompt) :]]
        stopped = bool(tokens) and tokens[-1] in self.eos_ids
        # Like mlx-lm's stream_generate, the end-of-turn token itself is not part of the text.
        shown = tokens[:-1] if stopped else tokens
        answer = self.tokenizer.decode(shown, skip_special_tokens=False)
        seconds = time.perf_counter() - start
        return Completion(
            answer, "stop" if stopped else "length", len(prompt), len(tokens), seconds
        )

    def close(self) -> None:
        self._scratch.cleanup()
