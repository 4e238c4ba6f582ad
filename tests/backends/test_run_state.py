"""The loop bookkeeping and option checks both backends share: fast, no model, no tensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path

import pytest

from backends.run_options import checked_profile, fingerprint
from backends.run_state import (
    Hooks,
    LoopConfig,
    Row,
    RunState,
    finished_reason,
    is_oom,
    retry_after_oom,
    run_loop,
    shrink_after_oom,
)
from sam_brain.errors import BackendUnavailable, TrainingFailed
from sam_brain.protocols import Progress

# `state.json` as the backends wrote it before the shared module existed: renaming a field
# would stop every saved checkpoint from resuming.
OLD_STATE = {
    "bad_evals": 1,
    "batch_size": 2,
    "best_step": 4,
    "best_val_loss": 1.25,
    "fingerprint": "3ceac89a1da2cef007412ff7087f23b7",
    "grad_accum": 4,
    "initial_val_loss": 2.5,
    "last_val_loss": 1.5,
    "max_seq_length": 512,
    "micro": 24,
    "recent_losses": [1.0, 0.5],
    "seconds": 3.25,
    "step": 6,
    "tokens": 900,
}


def test_a_state_json_written_before_still_resumes(tmp_path: Path) -> None:
    assert {f.name for f in fields(RunState)} == set(OLD_STATE)
    state = RunState.from_saved({**OLD_STATE, "written_by_a_later_version": True})
    assert asdict(state) == OLD_STATE
    assert finished_reason(state, LoopConfig(6, 2, 2, 3, 0)) == "done"
    assert finished_reason(state, LoopConfig(8, 2, 2, 1, 0)) == "early_stopped"
    assert finished_reason(state, LoopConfig(8, 2, 2, 2, 0)) == ""


def test_resume_fingerprint_is_the_one_old_checkpoints_carry(tmp_path: Path) -> None:
    # Values computed by the backends' fingerprint functions before they were shared.
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n')
    profile = {"lora_rank": 4, "learning_rate": 1e-4}
    base = Path("/models/base")
    assert fingerprint(base, profile, 7, tmp_path) == "1a3d5a4940a6c43a1d6cc443df539c1e"  # mlx
    assert fingerprint(base, profile, 7, tmp_path, True) == "3ceac89a1da2cef007412ff7087f23b7"


def test_profile_check_names_every_problem_at_once() -> None:
    linears = {"self_attn.q_proj", "mlp.down_proj"}
    profile = {
        "lora_keys": ["self_attn.q_proj", "mlp.nope"],
        "num_layers": 9,
        "batch_size": 0,
        "load_in_4bit": True,
        "old_flag_left_off": False,  # asks for nothing: accepted though unknown
    }
    with pytest.raises(BackendUnavailable) as err:
        checked_profile(profile, backend="x", num_blocks=4, block_linears=linears)
    assert str(err.value) == (
        "x backend cannot honour: load_in_4bit=True: not an option this backend knows; "
        "batch_size=0 is out of range; num_layers=9 but the model has 4 blocks; "
        "lora_keys ['mlp.nope'] are not linear modules of a block "
        "(choose from: mlp.down_proj, self_attn.q_proj)"
    )
    ok = {"lora_keys": ["mlp.down_proj"], "old_flag_left_off": False}
    opts = checked_profile(ok, backend="x", num_blocks=4, block_linears=linears)
    assert (opts.patience, opts.num_layers, opts.lora_keys) == (3, -1, ["mlp.down_proj"])
    given = checked_profile(
        {**ok, "patience": 2, "dpo_beta": 0.5}, backend="x", num_blocks=4, block_linears=linears
    )
    assert (given.patience, given.dpo_beta) == (2, 0.5)
    with pytest.raises(BackendUnavailable, match=r"dpo_beta=0\.0 is out of range"):
        checked_profile({**ok, "dpo_beta": 0.0}, backend="x", num_blocks=4, block_linears=linears)


def test_out_of_memory_halves_the_batch_then_the_length() -> None:
    state = RunState(batch_size=4, grad_accum=2, max_seq_length=100, micro=6)
    rows: list[Row] = [([1] * 80, [0] * 60 + [1] * 20), ([1] * 30, [1] * 30)]
    notes: list[str] = []
    assert shrink_after_oom(state, rows, MemoryError("boom"), notes) is rows
    assert (state.batch_size, state.grad_accum, state.micro) == (2, 4, 12)
    state.batch_size = 1
    cut = shrink_after_oom(state, rows, MemoryError("boom"), notes)
    # The first row's supervised tokens all lie past 50: nothing left to learn, dropped.
    assert state.max_seq_length == 50 and cut == [([1] * 30, [1] * 30)]
    assert notes == [
        "out of memory (boom); retried with batch_size 2, grad_accum 4",
        "out of memory (boom); retried with max_seq_length 50",
    ]


class OutOfMemoryError(RuntimeError):
    """Named as torch's (`torch.OutOfMemoryError`), whose message need not say "memory"."""


def test_oom_is_recognised_by_type_or_message() -> None:
    assert is_oom(MemoryError()) and is_oom(OutOfMemoryError("CUDA error 2"))
    assert is_oom(RuntimeError("[METAL] Command buffer execution failed: Out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


class Attempts:
    """Stands in for a training attempt: fails with the queued errors, then finishes."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.seen: list[int] = []

    def __call__(self, rows: list[Row]) -> str:
        self.seen.append(len(rows))
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def _retry(attempt: Attempts, state: RunState, **kw: bool) -> tuple[str, list[str], list[str]]:
    notes: list[str] = []
    said: list[str] = []
    rows: list[Row] = [([1, 2], [0, 1])]
    reason = retry_after_oom(
        attempt, rows, state, notes, announce=said.append, release=lambda: said.append("free"), **kw
    )
    return reason, notes, said


def test_retry_after_oom_shrinks_and_retries_exactly_once() -> None:
    state = RunState(4, 1, 64)
    attempt = Attempts(RuntimeError("CUDA out of memory"))
    reason, notes, said = _retry(attempt, state)
    assert (
        reason == "done"
        and attempt.seen == [1, 1]
        and (state.batch_size, state.grad_accum) == (2, 2)
    )
    assert said == ["free", notes[0]]

    again = Attempts(MemoryError("a"), MemoryError("b"))
    with pytest.raises(TrainingFailed, match=r"out of memory at step 1 with batch_size 2, .*\(b\)"):
        _retry(again, RunState(4, 1, 64))
    assert len(again.seen) == 2

    with pytest.raises(RuntimeError, match="shape mismatch"):  # not memory: not retried
        _retry(Attempts(RuntimeError("shape mismatch")), RunState(4, 1, 64))
    alone = Attempts(MemoryError("c"))
    with pytest.raises(TrainingFailed, match="batch_size 4"):  # retry off: several processes
        _retry(alone, RunState(4, 1, 64), retry=False)
    assert alone.seen == [1]


def _losses(values: list[float]) -> Iterator[float]:
    yield from values


def test_loop_keeps_the_best_saves_on_schedule_and_stops_early() -> None:
    state = RunState(1, 1, 16)
    cfg = LoopConfig(total_steps=10, eval_every=2, save_every=3, patience=2, seed=1)
    events: list[str] = []
    reports: list[Progress] = []
    val = _losses([2.0, 1.0, 1.5, 1.2, 0.1])
    seeds: list[int] = []

    def step(seed: int) -> tuple[float, int]:
        seeds.append(seed)
        state.micro += 1
        return 0.5, 10

    hooks = Hooks(
        reports.append,
        lambda: False,
        on_best=lambda: events.append(f"best@{state.step}"),
        on_save=lambda: events.append(f"save@{state.step}"),
    )
    reason = run_loop(state, cfg, hooks, step, lambda: next(val), lambda: 1.0)

    assert reason == "early_stopped" and state.step == 8 and state.micro == 8
    assert events == ["best@2", "save@3", "best@4", "save@6"]
    assert (state.best_val_loss, state.best_step, state.bad_evals) == (1.0, 4, 2)
    assert seeds == [1_000_003 + k for k in range(8)]
    assert [r.val_loss for r in reports] == [None, 2.0, 2.0, 1.0, 1.0, 1.5, 1.5, 1.2]
    assert reports[7].message == "validation loss 1.2000" and state.tokens == 80
    assert state.metrics(9.0)["final_train_loss"] == 0.5

    polls = iter([False, True])
    stopped = RunState(1, 1, 16)
    hooks.cancelled = lambda: next(polls)
    assert run_loop(stopped, cfg, hooks, step, None, lambda: 1.0) == "cancelled"
    assert stopped.step == 1
    assert json.loads(json.dumps(asdict(stopped))) == asdict(stopped)  # state.json-safe
