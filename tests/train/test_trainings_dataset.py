"""Each named training's dataset holds its own samples only (checked on the written files)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from sam_brain.config_load import parse_config
from sam_brain.home import Home
from sam_brain.pipeline.training_select import selector
from sam_brain.pool import file_lock
from sam_brain.protocols import Sample, stable_id
from sam_brain.train.dataset import build_dataset, new_samples_since_last_run


def sample(i: int, source: str, **meta: Any) -> Sample:
    g = f"{source}-g{i % 3}"
    return Sample(
        id=stable_id(source, str(i)),
        source=source,
        source_key=g,
        group=g,
        messages=[
            {"role": "user", "content": f"{source} question {i}"},
            {"role": "assistant", "content": f"{source} answer {i}"},
        ],
        meta=meta,
    )


def make_home(tmp_path: Path) -> Home:
    cfg = parse_config(
        {
            "data_dir": str(tmp_path / "data"),
            "trainings": {
                "gh": {"sources": ["teacher"], "schemas": ["gh"], "min_for_training": 2},
                "acme": {"projects": ["*/acme"], "sources": ["sessions"]},
                "docs": {},  # no rule: only samples pinned to it
            },
        }
    )
    home = Home.open(cfg)
    rows = [
        *(sample(i, "sessions", cwd="/work/acme") for i in range(6)),
        *(sample(i + 100, "sessions", cwd="/work/other") for i in range(5)),
        *(sample(i, "teacher", schema="gh") for i in range(7)),
        *(sample(i + 100, "teacher", schema="docker") for i in range(3)),
        *(sample(i, "dataset", training="docs") for i in range(4)),
        # pinned to gh although it matches none of gh's rules: pinned wins
        *(sample(i + 200, "sessions", cwd="/work/acme", training="gh") for i in range(2)),
    ]
    # A transcript of /work/acme whose recorded cwd says nothing: its Claude Code project
    # folder (the source key, never scrubbed) places it.
    s = sample(300, "sessions", cwd="/home/user/elsewhere")
    rows.append(replace(s, source_key="/h/.claude/projects/-work-acme/s300.jsonl"))
    with file_lock(home.pool.lock_path):
        home.pool.upsert([(s, "train") for s in rows])
    return home


def dataset_texts(home: Home, out: Path) -> set[str]:
    build_dataset(home, out)
    texts = set()
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl"):
        for line in (out / name).read_text().splitlines():
            texts.add(json.loads(line)["messages"][0]["content"])
    return texts


def test_each_training_trains_on_its_own_samples_only(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    gh = dataset_texts(home.for_training("gh"), tmp_path / "gh")
    assert gh == {f"teacher question {i}" for i in range(7)} | {
        f"sessions question {i + 200}" for i in range(2)
    }
    acme = dataset_texts(home.for_training("acme"), tmp_path / "acme")
    assert acme == {f"sessions question {i}" for i in range(6)} | {"sessions question 300"}
    docs = dataset_texts(home.for_training("docs"), tmp_path / "docs")
    assert docs == {f"dataset question {i}" for i in range(4)}
    # The default keeps everything not pinned to a named training (today's behaviour).
    default = dataset_texts(home, tmp_path / "sam")
    assert len(default) == 6 + 5 + 7 + 3 + 1
    assert not any(t.startswith("dataset") for t in default)
    assert "sessions question 200" not in default
    # The threshold counts each training's own new samples.
    counts = {h.training: new_samples_since_last_run(h) for h in home.trainings()}
    assert counts == {"sam": 22, "acme": 7, "docs": 4, "gh": 9}
    home.close()


def test_without_named_trainings_the_default_takes_the_whole_pool(tmp_path: Path) -> None:
    home = Home.open(parse_config({"data_dir": str(tmp_path / "data")}))
    s = sample(1, "dataset", training="elsewhere")  # pinned to a training no longer configured
    assert selector(home.config, "sam")(s)
    with file_lock(home.pool.lock_path):
        home.pool.upsert([(s, "train"), (sample(2, "git"), "train")])
    assert new_samples_since_last_run(home) == 2
    home.close()
