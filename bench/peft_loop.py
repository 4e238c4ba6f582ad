"""A plain transformers + peft LoRA loop: the peer `bench/train.py --real` compares ours against.

Nothing of SAM Brain is imported: rows are rendered with the model's chat template, the prompt of
the last assistant turn is masked, batches are taken in file order and padded to their longest
row, and AdamW updates the LoRA weights. The loop's seconds and non-padding tokens are printed as
one `@@{json}` line.

    python bench/peft_loop.py BASE DATA_DIR --steps 4 --batch 2 --max-seq 256 --rank 8 --alpha 16
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def encode(tok: Any, messages: list[dict[str, Any]], max_seq: int) -> tuple[list[int], list[int]]:
    full = tok.apply_chat_template(messages, tokenize=False)
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    ids = tok(full, add_special_tokens=False)["input_ids"][:max_seq]
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
    return ids, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("base")
    p.add_argument("data")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-seq", type=int, default=256)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--keys", default="q_proj,k_proj,v_proj,o_proj")
    args = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.base)
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    lora = LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, target_modules=args.keys.split(",")
    )
    model = get_peft_model(model, lora)
    model.train()
    lines = (Path(args.data) / "train.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [encode(tok, json.loads(line)["messages"], args.max_seq) for line in lines if line]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    optimizer = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr)

    tokens, losses = 0, []
    start = time.perf_counter()
    for step in range(args.steps):
        chunk = [rows[(step * args.batch + i) % len(rows)] for i in range(args.batch)]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chunk])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk])
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        losses.append(float(loss))
    seconds = time.perf_counter() - start
    doc = {"steps": args.steps, "tokens": tokens, "seconds": seconds, "losses": losses}
    print("@@" + json.dumps(doc), flush=True)


if __name__ == "__main__":
    main()
