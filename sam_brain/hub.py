"""Resolving a base model: a local directory, the Hugging Face cache, or a download on first use.

Downloads go through huggingface-hub (with its progress bar). Offline, or with `HF_HUB_OFFLINE=1`,
a model that is not already on disk is a `ModelUnavailable` naming the model and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sam_brain.errors import ModelUnavailable

ALLOW = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja", "tokenizer*"]


def resolve_model(ref: str, cache_dir: Path | None = None) -> Path:
    """Return a local directory holding the model named by `ref` (a path or a hub id)."""
    local = Path(ref).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ModelUnavailable(f"{local} is a directory but has no config.json; is it a model?")
        return local
    if ref.startswith(("/", "./", "~")) or (os.sep in ref and ref.count("/") > 1):
        raise ModelUnavailable(f"base model path {ref} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    try:
        # local_files_only first: a cached model must never wait on the network.
        return Path(
            snapshot_download(ref, allow_patterns=ALLOW, cache_dir=cache_dir, local_files_only=True)
        )
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        if offline:
            raise ModelUnavailable(_how(ref, "HF_HUB_OFFLINE is set")) from None
    try:
        return Path(snapshot_download(ref, allow_patterns=ALLOW, cache_dir=cache_dir))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as err:
        raise ModelUnavailable(_how(ref, f"download failed: {err.__class__.__name__}")) from err


def _how(ref: str, why: str) -> str:
    return (
        f"base model {ref!r} is not on this machine ({why}); download it once with "
        f"`huggingface-cli download {ref}` on a connected machine, or set "
        f"training.mlx_base_model / training.cuda_base_model to a local model directory"
    )


def base_fingerprint(model_dir: Path | str) -> str:
    """A cheap identity of a base model: config.json bytes plus weight file names and sizes."""
    import hashlib

    root = Path(model_dir)
    h = hashlib.sha256()
    config = root / "config.json"
    if config.is_file():
        h.update(config.read_bytes())
    for f in sorted(root.glob("*.safetensors")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]
