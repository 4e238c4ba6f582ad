"""Export of a registered version to every format, each loaded and checked in its own runtime."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deployment.export import ExportFailed, ExportResult, export_version
from deployment.verify import (
    EXACT_F32,
    QUANT_RULES,
    Reference,
    Runtime,
    check_transformers,
    compare,
    reference,
)
from sam_brain.errors import BackendUnavailable, BadRequest, Conflict, NotFound
from sam_brain.store import Store
from sam_brain.versions import Versions, checksum_dir

HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
needs_llama = pytest.mark.skipif(
    not HAS_LLAMA, reason="llama-cpp-python is not installed (pip install llama-cpp-python)"
)
LORA = {
    "rank": 8,
    "scale": 2.0,
    "dropout": 0.0,
    "keys": ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"],
}


def make_adapter(base: Path, out: Path, num_layers: int = 4) -> Path:
    """An mlx-lm LoRA adapter with random non-zero lora_b, saved as mlx-lm saves it."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model, _ = load(str(base))
    model.freeze()
    linear_to_lora_layers(model, num_layers, LORA)
    mx.random.seed(1)
    params = dict(tree_flatten(model.trainable_parameters()))
    b = {k: mx.random.normal(v.shape) * 0.05 for k, v in params.items() if k.endswith("lora_b")}
    model.load_weights(list(b.items()), strict=False)
    out.mkdir(parents=True)
    mx.save_safetensors(
        str(out / "adapters.safetensors"), dict(tree_flatten(model.trainable_parameters()))
    )
    config = {"fine_tune_type": "lora", "model": str(base), "num_layers": num_layers}
    config["lora_parameters"] = LORA
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


@pytest.fixture(scope="module")
def version(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    adapter = make_adapter(tiny_model, root / "run")
    versions = Versions(Store(root / "state.db"), root / "versions")
    return Path(versions.register(adapter, base_model=str(tiny_model)).adapter_path)


@pytest.fixture(scope="module")
def ref(tiny_model: Path, version: Path) -> Reference:
    return reference(tiny_model, version)


def digests(folder: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()}


def replay(rows: np.ndarray) -> Any:
    """A fake runtime's forward: fixed logit rows whatever the ids (the last row repeats)."""

    def forward(ids: list[int]) -> np.ndarray:
        out = np.tile(rows[-1], (len(ids), 1))
        out[: min(len(ids), len(rows))] = rows[: len(ids)]
        return out

    return forward


def assert_exact(check: dict[str, Any]) -> None:
    assert check["ok"] and check["tokens_identical"] and check["top1_agreement"] == 1.0
    assert check["rms_to_source"] < check["rms_to_base"] / 10


def test_reference_is_changed_by_the_adapter(ref: Reference) -> None:
    assert 0 < len(ref.tokens) <= 16
    assert ref.logits.shape == ref.base_logits.shape == (len(ref.tokens), 4096)
    assert float(np.abs(ref.logits - ref.base_logits).max()) > 0.05


@pytest.mark.slow
def test_mlx_export_is_the_adapter_as_mlx_lm_writes_it(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    res = export_version(version, tiny_model, "mlx", tmp_path / "out")
    assert set(res.files) == {"adapters.safetensors", "adapter_config.json"}
    for name in res.files:
        assert (tmp_path / "out" / name).read_bytes() == (version / name).read_bytes()
    assert [c["runtime"] for c in res.checks] == ["mlx-lm"]
    assert_exact(res.checks[0])
    assert res.checks[0]["max_abs_logit_diff"] == 0.0


@pytest.mark.slow
def test_peft_export_loads_in_transformers_peft(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    res = export_version(version, tiny_model, "peft", tmp_path / "out")
    assert set(res.files) == {"adapter_model.safetensors", "adapter_config.json"}
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16.0)
    assert res.checks[0]["runtime"] == "transformers+peft"
    assert_exact(res.checks[0])
    assert res.checks[0]["max_abs_logit_diff"] < 1e-3


@pytest.mark.slow
def test_fused_export_is_merged_and_exporting_twice_is_idempotent(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file

    out = tmp_path / "fused"
    first = export_version(version, tiny_model, "fused", out)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(first.files)
    assert first.checks[0]["runtime"] == "transformers" and not first.skipped
    assert_exact(first.checks[0])
    fused, base = (
        load_file(str(out / "model.safetensors")),
        load_file(str(tiny_model / "model.safetensors")),
    )
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert not np.allclose(fused[q], base[q]) and np.array_equal(fused[k], base[k])

    before = digests(out)
    again = export_version(version, tiny_model, "fused", out)
    assert again.skipped and again.files == first.files and digests(out) == before
    rebuilt = export_version(version, tiny_model, "fused", out, force=True)
    assert not rebuilt.skipped
    assert {n: d for n, d in digests(out).items() if n != "export.json"} == {
        n: d for n, d in before.items() if n != "export.json"
    }
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_verification_rejects_an_artifact_without_the_adapter(
    tiny_model: Path, ref: Reference
) -> None:
    # The bare base loaded where the fused model should be: tokens may even agree, logits do not.
    with pytest.raises(ExportFailed, match=r"adapter is missing|differs|diverge"):
        check_transformers(tiny_model, ref, "model.safetensors")


def test_compare_tolerates_a_flip_only_at_a_near_tie(ref: Reference) -> None:
    """A fake runtime replays the source logits, with the first token flipped by `eps`."""
    first, pos = ref.tokens[0], len(ref.prompt) - 1
    runner_up = int(np.argsort(ref.logits[0])[-2])
    tied = ref.logits.copy()
    tied[0, runner_up] = tied[0, first] - 5e-4  # the source barely preferred `first`
    near_tie = replace(ref, logits=tied)

    def fake(source: Reference, eps: float) -> Runtime:
        rows = np.concatenate([np.zeros((pos, 4096), np.float32), source.logits])

        rows[pos, runner_up] = rows[pos, first] + eps
        return Runtime("fake", replay(rows))

    same = compare("same", fake(ref, -1.0), ref, EXACT_F32)
    assert same["tokens_identical"] and same["top1_agreement"] == 1.0
    tolerated = compare("tie", fake(near_tie, 5e-4), near_tie, EXACT_F32)
    assert tolerated["first_divergence"] == 0 and tolerated["ok"]
    with pytest.raises(ExportFailed, match=r"confident positions \[0\]"):
        compare("flipped", fake(ref, 5e-4), ref, EXACT_F32)


def test_quantized_rule_bounds_the_relative_logit_error(ref: Reference) -> None:
    pos = len(ref.prompt) - 1
    rows = np.concatenate([np.zeros((pos, 4096), np.float32), ref.logits])
    spread = float(np.sqrt(np.mean(np.square(ref.logits - ref.logits.mean(-1, keepdims=True)))))

    def noisy(scale: float) -> Runtime:
        noise = np.random.default_rng(0).normal(0, scale * spread, rows.shape).astype(np.float32)
        return Runtime("fake", replay(rows + noise))

    rule = QUANT_RULES["q4_k_m"]
    assert compare("q4-like", noisy(0.2), ref, rule)["relative_logit_error"] == pytest.approx(
        0.2, abs=0.01
    )
    with pytest.raises(ExportFailed, match=r"relative logit error (0\.9|1\.)\d* > 0\.5"):
        compare("broken", noisy(1.0), ref, rule)


def test_corrupt_adapter_fails_cleanly(tiny_model: Path, version: Path, tmp_path: Path) -> None:
    broken = tmp_path / "versions" / "v9.9.9"
    shutil.copytree(version, broken)
    weights = broken / "adapters.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ExportFailed, match="manifest checksum"):
        export_version(broken, tiny_model, "mlx", tmp_path / "out")
    # Corrupt at registration time: the checksum matches, the file does not parse.
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["checksum"] = checksum_dir(broken)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportFailed, match=r"adapters\.safetensors is corrupt"):
        export_version(broken, tiny_model, "peft", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["versions"]


def test_bad_arguments_are_refused(tiny_model: Path, version: Path, tmp_path: Path) -> None:
    with pytest.raises(BadRequest, match="choose one of mlx, peft"):
        export_version(version, tiny_model, "onnx", tmp_path / "o")
    with pytest.raises(BadRequest, match="applies to gguf and ollama"):
        export_version(version, tiny_model, "mlx", tmp_path / "o", quant="q4_k_m")
    with pytest.raises(BadRequest, match="unknown quant"):
        export_version(version, tiny_model, "gguf", tmp_path / "o", quant="q3_k")
    with pytest.raises(NotFound):
        export_version(tmp_path / "v0.0.0", tiny_model, "mlx", tmp_path / "o")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(Conflict, match="not a SAM Brain export"):
        export_version(version, tiny_model, "mlx", precious)
    assert (precious / "notes.txt").read_text() == "mine"


def test_missing_converter_is_a_clear_error(
    tiny_model: Path, version: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAM_BRAIN_LLAMA_CPP", str(tmp_path / "empty"))
    if not HAS_LLAMA:  # the first missing tool is then llama-cpp-python itself
        with pytest.raises(BackendUnavailable, match="pip install llama-cpp-python"):
            export_version(version, tiny_model, "gguf", tmp_path / "o")
        return
    with pytest.raises(BackendUnavailable, match=r"convert_hf_to_gguf\.py.*install-converter"):
        export_version(version, tiny_model, "gguf", tmp_path / "o")
    monkeypatch.setitem(__import__("sys").modules, "llama_cpp", None)
    with pytest.raises(BackendUnavailable, match="pip install llama-cpp-python"):
        export_version(version, tiny_model, "ollama", tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def gguf_export(
    tiny_model: Path, version: Path, tmp_path_factory: pytest.TempPathFactory
) -> ExportResult:
    return export_version(version, tiny_model, "gguf", tmp_path_factory.mktemp("g") / "gguf")


@needs_llama
@pytest.mark.slow
def test_gguf_export_quantizes_and_ships_a_lora(gguf_export: ExportResult) -> None:
    import llama_cpp

    res = gguf_export
    assert set(res.files) == {"model-q4_k_m.gguf", "adapter-f16.gguf"}
    assert [c["artifact"] for c in res.checks] == [
        "model-f16.gguf",
        "model-q4_k_m.gguf",
        "base-f16.gguf + adapter-f16.gguf",
    ]
    assert_exact(res.checks[0])
    assert_exact(res.checks[2])
    assert res.checks[1]["rule"] == "relative logit error <= 0.5 (q4_k_m)"
    assert res.checks[1]["ok"] and 0 < res.checks[1]["relative_logit_error"] <= 0.5
    llm = llama_cpp.Llama(
        model_path=str(res.out / "model-q4_k_m.gguf"), vocab_only=True, verbose=False
    )
    try:
        assert llm.metadata["tokenizer.ggml.pre"] == "qwen2"
        assert "<|im_start|>" in llm.metadata["tokenizer.chat_template"]
        assert llm.metadata["general.file_type"] == "15"  # LLAMA_FTYPE_MOSTLY_Q4_K_M
    finally:
        llm.close()


@needs_llama
@pytest.mark.slow
def test_gguf_export_twice_is_skipped(
    gguf_export: ExportResult, tiny_model: Path, version: Path
) -> None:
    before = digests(gguf_export.out)
    again = export_version(version, tiny_model, "gguf", gguf_export.out)
    assert (
        again.skipped and again.checks == gguf_export.checks and digests(gguf_export.out) == before
    )


@needs_llama
@pytest.mark.slow
def test_ollama_export_writes_a_chatml_modelfile(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    res = export_version(version, tiny_model, "ollama", tmp_path / "ollama", quant="q8_0")
    assert set(res.files) == {"model-q8_0.gguf", "Modelfile"}
    text = (tmp_path / "ollama" / "Modelfile").read_text()
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    assert "<|im_start|>assistant" in text and "{{ .Content }}" in text
    assert (
        'SYSTEM """You are Qwen, created by Alibaba Cloud. You are a helpful assistant."""' in text
    )
    assert res.checks[-1] == {
        "artifact": "Modelfile",
        "runtime": "Modelfile check",
        "from": "./model-q8_0.gguf",
        "stops": ["<|im_end|>", "<|endoftext|>"],
    }
    assert res.checks[1]["ok"] and 0 < res.checks[1]["relative_logit_error"] <= 0.1


@needs_llama
@pytest.mark.slow
def test_unknown_tokenizer_fails_without_leaving_files(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    tok = json.loads((base / "tokenizer.json").read_text())
    split = tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]
    split["Regex"] = split["Regex"].replace(r"\p{N}|", r"\p{N}{1,3}|", 1)  # Llama-3-style digits
    (base / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ExportFailed, match="does not know this tokenizer's pre-tokenizer"):
        export_version(version, base, "gguf", tmp_path / "out", quant="f16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


@pytest.mark.slow
def test_quantized_mlx_base_is_dequantized_and_says_so(tiny_model: Path, tmp_path: Path) -> None:
    from mlx_lm import convert

    base = tmp_path / "base-4bit"
    convert(str(tiny_model), str(base), quantize=True, q_group_size=64, q_bits=4)
    adapter = make_adapter(base, tmp_path / "versions" / "v1.0.0")
    res = export_version(adapter, base, "fused", tmp_path / "fused")
    assert any("dequantized before fusing" in note for note in res.notes)
    config = json.loads((tmp_path / "fused" / "config.json").read_text())
    assert "quantization" not in config and "quantization_config" not in config
    assert_exact(res.checks[0])
    peft = export_version(adapter, base, "peft", tmp_path / "peft")
    assert any("dequantized copy" in note for note in peft.notes)
    assert_exact(peft.checks[0])


@needs_llama
def test_ollama_refuses_a_non_chatml_base_before_building(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = (
        "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n"
        "{{ m.content }}<|eot_id|>{% endfor %}"
    )
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ExportFailed, match="not ChatML; use --format gguf"):
        export_version(version, base, "ollama", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_samctl_export_of_a_registered_version(
    tiny_model: Path,
    version: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`samctl export` on a home: the version's recorded base is resolved, the export recorded."""
    import json

    from sam_brain.config_load import load_config
    from sam_brain.control.cli import main
    from sam_brain.home import Home

    home_dir = tmp_path / "home"
    home_dir.mkdir()
    monkeypatch.setenv("SAM_BRAIN_HOME", str(home_dir))
    monkeypatch.delenv("SAM_BRAIN_CONFIG", raising=False)
    (home_dir / "config.toml").write_text(f'[training]\nmlx_base_model = "{tiny_model}"\n')
    home = Home.open(load_config())
    home.versions.register(version, base_model=str(tiny_model))
    home.close()
    out = tmp_path / "peft-out"
    assert main(["export", "v1.0.0", "--format", "peft", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (out / "adapter_model.safetensors").exists() and doc["fmt"] == "peft"
    home = Home.open(load_config())
    assert home.store.events("exported")[0]["data"]["format"] == "peft"
    home.close()
    assert main(["export", "v9.9.9", "--format", "peft", "--out", str(tmp_path / "x")]) == 3


def test_export_never_replaces_a_user_folder_holding_an_export_json(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    """Issue 14: a folder with a file named export.json plus the user's files was wiped."""
    out = tmp_path / "mine"
    (out / "sub").mkdir(parents=True)
    (out / "precious.txt").write_text("keep me")
    (out / "sub" / "deep.txt").write_text("me too")
    (out / "export.json").write_text('{"files": {}}')
    out.chmod(0o755)
    with pytest.raises(Conflict, match="not a SAM Brain export") as err:
        export_version(version, tiny_model, "mlx", out)
    assert "\n" not in str(err.value)
    assert (out / "precious.txt").read_text() == "keep me"
    assert (out / "sub" / "deep.txt").read_text() == "me too"
    assert out.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no stage left behind


@pytest.mark.slow
def test_export_replaces_only_its_own_folder_and_keeps_the_mode(
    tiny_model: Path, version: Path, tmp_path: Path
) -> None:
    new = tmp_path / "new"
    export_version(version, tiny_model, "mlx", new)
    assert new.stat().st_mode & 0o777 != 0o700  # the umask's default, not mkdtemp's 0700
    assert set(json.loads((new / "export.json").read_text())["files"]) == {
        "adapters.safetensors",
        "adapter_config.json",
    }
    new.chmod(0o750)
    export_version(version, tiny_model, "mlx", new, force=True)  # ours: rebuilt in place
    assert new.stat().st_mode & 0o777 == 0o750
    (new / "notes.txt").write_text("added by the user")  # no longer only ours
    with pytest.raises(Conflict):
        export_version(version, tiny_model, "mlx", new, force=True)
    assert (new / "notes.txt").read_text() == "added by the user"
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o751)
    empty.chmod(0o751)
    export_version(version, tiny_model, "mlx", empty)
    assert empty.stat().st_mode & 0o777 == 0o751 and (empty / "export.json").is_file()
    link = tmp_path / "link"
    link.symlink_to(empty)
    with pytest.raises(Conflict, match="symbolic link"):
        export_version(version, tiny_model, "mlx", link)
