"""End to end on the real model: SAM Brain's own chat endpoint (SmolLM2-135M-Instruct) is the
OpenAI-compatible teacher of schema -> generate -> pool -> SFT -> preferences -> DPO.

A 135M teacher rarely writes a valid example of a CLI schema, so the SFT rows also come from the
docs collector (the product's own ingest); what `generate` produced is accounted for either way.
The preferences job then samples candidates from the SFT version for prompts it never trained
on, the same endpoint scores them (it follows the one-shot format, if not wisely), and the next
run's DPO stage trains on the pairs: the weights move off the SFT adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from aiohttp import web

from deployment.serving import ChatServer, add_routes
from sam_brain.config import Profile
from sam_brain.config_load import parse_config
from sam_brain.dev.teacher_wire import serve_app
from sam_brain.home import Home
from sam_brain.pipeline.ingest import ingest, make_collectors
from sam_brain.protocols import TrainSpec
from sam_brain.store import Store
from sam_brain.teach.jobs import JobSpec
from sam_brain.teach.runner import run_job
from sam_brain.train.dataset import build_dataset
from sam_brain.versions import Versions

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SECTIONS = {
    "build.md": ["Installing", "Compiling", "Linking", "Packaging", "Signing", "Publishing"],
    "ops.md": ["Restarting", "Rotating logs", "Backups", "Alerts"],
}


def write_doc(path: Path, headings: list[str]) -> None:
    body = [f"# {path.stem.title()} guide\n"]
    for i, h in enumerate(headings):
        body.append(
            f"## {h}\n\nStep {i + 1} of the {path.stem} guide: run `make {h.split()[0].lower()}`"
            f" from the project root, then check that the {h.lower()} log ends with OK.\n"
        )
    path.write_text("\n".join(body))


@pytest.fixture
def chat_url(real_model: Path, tmp_path: Path) -> Iterator[str]:
    versions = Versions(Store(tmp_path / "serving" / "state.db"), tmp_path / "serving" / "v")
    server = ChatServer(versions, real_model, default_max_tokens=48)
    app = web.Application()
    add_routes(app, server)
    with serve_app(app) as url:
        yield url + "/v1"
    server.close()


def train(home: Home, model: Path, run_id: str, init: str = "") -> tuple[Path, dict[str, int]]:
    from backends.mlx import MLXBackend

    data = home.runs_dir / run_id / "data"
    counts = build_dataset(home, data)
    profile = Profile(
        lora_rank=4,
        lora_alpha=8.0,
        num_layers=4,
        batch_size=2,
        grad_accum=1,
        max_seq_length=256,
        learning_rate=1e-4,
        max_steps=2,
        eval_every=2,
        save_every=2,
        dpo_learning_rate=1e-4,
        dpo_max_steps=2,
    )
    out = home.runs_dir / run_id / "adapter"
    spec = TrainSpec(run_id, str(model), str(data), str(out), asdict(profile), init_adapter=init)
    MLXBackend().train(spec, lambda p: None, lambda: False)
    return out, counts


def test_schema_generate_sft_preferences_dpo_on_the_real_model(
    real_model: Path, chat_url: str, tmp_path: Path
) -> None:
    import mlx.core as mx

    from deployment.resident import ResidentModel

    docs = tmp_path / "docs"
    docs.mkdir()
    write_doc(docs / "build.md", SECTIONS["build.md"])
    doc = {
        "data_dir": str(tmp_path / "home"),
        "sources": {"docs_paths": [str(docs)]},
        # No group held out for a gate here (none runs): every pair's group can train.
        "deployment": {"gate_holdout_share": 0.0},
        "teacher": {"provider": "openai", "model": "base", "base_url": chat_url,
                    "max_output_tokens": 48, "concurrency": 1},
    }  # fmt: skip
    home = Home.open(parse_config(doc))

    # schema -> generate -> pool: every answer accounted for, what was valid is in the pool.
    gen = run_job(
        home, JobSpec(kind="generate", source="samctl", count=4, options={"batch_size": 2})
    )
    assert gen.state == "done" and (gen.done, gen.total) == (2, 2), gen.error
    generated = [s for s, _ in home.pool.samples() if s.meta.get("schema") == "samctl"]
    assert len(generated) == gen.stored

    # SFT: the docs (and whatever generate stored) train version 1.
    ingest(home, make_collectors(home)["docs"])
    sft_dir, counts = train(home, real_model, "r1")
    assert counts["train"] > 0 and "preference" not in counts
    home.versions.register(sft_dir, run_id="r1")
    home.versions.activate("v1.0.0")

    # New data arrives; its prompts are held out from version 1.
    write_doc(docs / "ops.md", SECTIONS["ops.md"])
    ingest(home, make_collectors(home)["docs"])

    # preferences: K candidates from v1 (sampled), scored by the teacher -> pairs.
    mx.random.seed(0)
    resident = ResidentModel(real_model, prompt_cache_entries=0)
    # Three samples at temperature 1: two at 0.8 were once the same text for every prompt.
    spec = JobSpec(
        kind="preferences", count=6, options={"k": 3, "max_tokens": 24, "temperature": 1.0}
    )
    prefs = run_job(home, spec, exclusive=lambda fn: fn(resident))
    assert prefs.state == "done", prefs.error
    c = prefs.counts
    asked = prefs.total
    assert asked > 0, (c, prefs.message)
    assert c.get("preference_pairs", 0) + c.get("tie", 0) + c.get("unparseable_reply", 0) == asked
    pairs = [s for s, _ in home.pool.samples(kind="preference") if s.source == "teacher"]
    assert len(pairs) == c["preference_pairs"] > 0
    assert all(p.meta["adapter_version"] == "v1.0.0" and p.chosen != p.rejected for p in pairs)

    # DPO: the next run trains on the pairs, starting from version 1.
    dpo_dir, counts2 = train(home, real_model, "r2", init=str(sft_dir))
    assert counts2.get("preference", 0) == len(pairs), counts2  # pairs follow their group's split
    manifest = json.loads((dpo_dir / "manifest.json").read_text())
    assert manifest["metrics"]["dpo_steps"] == 2
    after = mx.load(str(dpo_dir / "adapters.safetensors"))
    sft_best = mx.load(str(dpo_dir / "checkpoint" / "sft_best.safetensors"))
    assert isinstance(after, dict) and isinstance(sft_best, dict)
    assert any(not mx.array_equal(after[k], sft_best[k]).item() for k in after)
    home.close()
