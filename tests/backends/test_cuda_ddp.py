"""The CUDA backend in several processes, on the CPU with gloo: DDP steps and `torchrun`.

The step function is checked in two hand-started processes; the whole backend is checked the
way it is deployed, `torchrun -m sam_brain.train.worker cuda spec.json`, against one process with the
same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from backends.cuda import CudaBackend
from backends.cuda_dist import Ranks, wrap
from backends.cuda_loop import Buckets, rank_batches, train_step
from backends.cuda_options import check_options, lora_config, read_shape
from sam_brain.config import Profile
from sam_brain.masking import encode_rows
from sam_brain.protocols import TrainSpec

REPO = Path(__file__).resolve().parents[2]
WORDS = ["garden", "parser", "index", "config", "branch", "token", "cache", "request"]
KEYS = ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]
PROFILE = asdict(
    Profile(
        lora_rank=8,
        lora_alpha=16.0,
        lora_dropout=0.1,  # dropout noise follows the micro-batch, not the process
        lora_keys=KEYS,
        batch_size=2,
        grad_accum=2,
        max_seq_length=128,
        learning_rate=1e-2,
        max_steps=4,
        eval_every=2,
        save_every=2,
    )
)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _lora(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from safetensors.torch import save_file
torch.set_num_threads(1)
rank, (init, base, out, repo) = int(sys.argv[1]), sys.argv[2:]
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
sys.path.insert(0, repo)
from tests.backends.test_cuda_ddp import agreements, ddp_steps
weights = ddp_steps(base, world=2)
save_file(weights, f"{out}/rank{rank}.safetensors")
open(f"{out}/agree{rank}.txt", "w").write(repr(agreements(rank)))
dist.destroy_process_group()
"""


def agreements(rank: int) -> list[bool]:
    """What the ranks agree on when one of them is asked: a cancel seen by rank 1 alone stops
    both; rank 0's decision is everyone's."""
    from backends.cuda_dist import any_rank, from_main

    ranks, cpu = Ranks(rank, 2), torch.device("cpu")
    return [
        any_rank(ranks, lambda: rank == 1, cpu)(),
        any_rank(ranks, lambda: False, cpu)(),
        from_main(ranks, rank == 0, cpu),
        from_main(ranks, rank == 1, cpu),
    ]


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def ddp_steps(base: str, world: int) -> dict[str, torch.Tensor]:
    """Two optimizer steps of `train_step` (wrapped in DDP when `world` > 1); the LoRA weights."""
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoTokenizer

    backend = CudaBackend(quantize=True)
    shape = read_shape(Path(base))
    opts = check_options({**PROFILE, "lora_keys": KEYS[:2]}, shape)
    torch.manual_seed(0)
    model = get_peft_model(backend.load_model(Path(base), training=True), lora_config(opts, shape))
    ranks = Ranks(dist_rank(), world) if world > 1 else Ranks()
    wrapped = wrap(model, ranks, torch.device("cpu"))
    assert (type(wrapped).__name__ == "DistributedDataParallel") is (world > 1)
    params = [p for p in model.parameters() if p.requires_grad]
    # Plain SGD: the update is linear in the gradient, so any mis-scaling across ranks shows.
    optimizer = torch.optim.SGD(params, lr=5.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tok = AutoTokenizer.from_pretrained(base)
    # Answers of very different lengths, so the ranks see different token counts.
    talks = [
        [
            {"role": "user", "content": f"Say {w} {n} times."},
            {"role": "assistant", "content": " ".join([w] * n)},
        ]
        for n, w in zip((1, 9, 2, 14, 3, 6, 1, 11), WORDS, strict=True)
    ]
    rows, _ = encode_rows(tok, talks, 128)
    buckets = Buckets(rows, 1, 0, tok.pad_token_id)
    micro = 0
    for step in range(2):
        # Three micro-batches per step: rank 0 takes two, rank 1 one, yet the step is the same.
        batches, used = rank_batches(buckets, micro, 3)
        assert used == 3 and len(batches) == (3 if world == 1 else 2 - dist_rank())
        micro += used
        # Seeded per micro-batch: LoRA dropout (0.1) draws the same masks however split.
        train_step(wrapped, optimizer, scheduler, batches, step + 1, seed=step)
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.slow
def test_ddp_on_gloo_keeps_ranks_identical_and_equal_to_one_process(
    tiny_model: Path, tmp_path: Path
) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [init, str(tiny_model), str(tmp_path), str(REPO)]
    procs = [
        subprocess.Popen([sys.executable, "-c", DDP_WORKER, str(rank), *args], env=env)
        for rank in (0, 1)
    ]
    single = ddp_steps(str(tiny_model), world=1)  # while the ranks start up
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    rank0 = _lora(tmp_path / "rank0.safetensors")
    rank1 = _lora(tmp_path / "rank1.safetensors")
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key])
        # Token-weighted scaling: ranks of 2 and 1 micro-batches equal one process of 3.
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-6)
    assert all(w.abs().max() > 1e-3 for k, w in rank0.items() if "lora_B" in k)
    for rank in (0, 1):
        assert (tmp_path / f"agree{rank}.txt").read_text() == "[True, False, True, False]"


def _talk(i: int) -> dict[str, Any]:
    word = WORDS[i % len(WORDS)]
    return {
        "messages": [
            {"role": "user", "content": f"Which word is number {i % len(WORDS)}?"},
            {"role": "assistant", "content": f"The word is {word}." + " Really." * (i % 5)},
        ]
    }


@pytest.mark.slow
def test_torchrun_two_processes_train_the_adapter_of_one_and_write_once(
    tiny_model: Path, tmp_path: Path
) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun next to {sys.executable}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(_talk(i)) + "\n" for i in range(24)))
    (data / "valid.jsonl").write_text("".join(json.dumps(_talk(i)) + "\n" for i in (50, 51, 52)))
    specs = {
        name: TrainSpec(
            run_id=name, base_model=str(tiny_model), data_dir=str(data),
            out_dir=str(tmp_path / name), profile=PROFILE,
        )
        for name in ("two", "one")
    }  # fmt: skip
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(specs["two"].to_json())
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")},
        "SAM_BRAIN_CUDA_QUANTIZE": "0",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO),
    }
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.Popen(
        [*cmd, "-m", "sam_brain.train.worker", "cuda", str(spec_file)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    # The same global batch (2 micro-batches of 2 rows per step) in this one process meanwhile.
    single = CudaBackend(quantize=False).train(specs["one"], lambda p: None, lambda: False)
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-4000:]

    messages = [json.loads(line[2:]) for line in stdout.splitlines() if line.startswith("@@")]
    # Rank 0 alone reports progress and the result (sam_brain/train/worker.py's `emit`).
    assert [m["step"] for m in messages if m["kind"] == "progress"] == [1, 2, 3, 4]
    results = [m for m in messages if m["kind"] == "result"]
    assert len(results) == 1 and {r["steps"] for r in results} == {4}  # rank 0 speaks alone
    assert "2 processes share each step; rank 0 writes the files" in results[0]["notes"]
    assert results[0]["metrics"]["tokens"] == single.metrics["tokens"]
    assert results[0]["metrics"]["best_val_loss"] == pytest.approx(
        single.metrics["best_val_loss"], rel=1e-5
    )

    # One set of files, the same as the single process wrote, and no leftovers.
    two, one = tmp_path / "two", tmp_path / "one"
    listing = sorted(p.name for p in two.iterdir())
    assert listing == sorted(p.name for p in one.iterdir())
    assert listing == ["adapter_config.json", "adapters.safetensors", "checkpoint", "manifest.json",
                       "peft"]  # fmt: skip
    ckpts = sorted(p.name for p in (two / "checkpoint").iterdir())
    assert len(ckpts) == 3 and ckpts[:2] == ["LATEST", "sft_best.safetensors"]
    assert ckpts[2].startswith("step-00000004-")
    assert sorted(p.name for p in (two / "peft").iterdir()) == [
        "adapter_config.json", "adapter_model.safetensors",
    ]  # fmt: skip
    assert json.loads((two / "manifest.json").read_text())["processes"] == 2

    for rel in ("adapters.safetensors", "checkpoint/sft_best.safetensors"):
        a, b = _lora(two / rel), _lora(one / rel)
        assert a.keys() == b.keys() and len(a) == 2 * len(KEYS) * 4
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    last = _lora(two / "checkpoint" / ckpts[2] / "adapter_model.safetensors")
    for key, value in _lora(next((one / "checkpoint").glob("step-*/adapter_model.*"))).items():
        torch.testing.assert_close(last[key], value, rtol=1e-4, atol=1e-5)
    assert any(w.abs().max() > 1e-3 for k, w in last.items() if "lora_B" in k)
