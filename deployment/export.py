"""Export a registered version in the formats other runtimes load, each verified in that runtime.

`export_version` turns `<data>/versions/vX.Y.Z/` (an mlx-lm adapter) into one of: `mlx` (the
adapter as mlx-lm writes it), `peft` (PEFT adapter), `fused` (adapter merged into the base, a
Hugging Face model folder), `gguf` (the fused model as a quantized GGUF plus the adapter alone as
a GGUF LoRA) or `ollama` (a GGUF plus a Modelfile). Everything is built in a temp folder next to
`out`, checked by loading it in its runtime (`deployment.verify`), and only then renamed into
place, so a failure leaves no half-written export. `out/export.json` records a fingerprint of the
inputs and a checksum per file; exporting the same version again finds it and skips the work.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from deployment import gguf
from deployment.export_build import _BUILDERS, _Job, _read_json
from sam_brain.errors import BadRequest, Conflict, ExportFailed, ModelUnavailable, NotFound
from sam_brain.versions import ADAPTER_FILES, checksum_dir

__all__ = ["FORMATS", "QUANTS", "ExportFailed", "ExportResult", "export_version"]

FORMATS = ("mlx", "peft", "fused", "gguf", "ollama")
QUANTS = ("q4_k_m", "q5_k_m", "q8_0", "f16")
DEFAULT_QUANT = "q4_k_m"
RECORD = "export.json"
SCHEMA = 1
_TOOLS = ("mlx-lm", "transformers", "peft", "llama-cpp-python")


@dataclass
class ExportResult:
    """What an export produced and how it was verified.

    `files`: file name -> size in bytes. `checks`: one entry per artifact loaded in its runtime
    (see `deployment.verify.compare`). `skipped`: an identical export was already at `out`.
    """

    version: str
    fmt: str
    out: Path
    quant: str | None
    files: dict[str, int]
    notes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


def export_version(
    version_dir: Path,
    base_model_dir: Path,
    fmt: str,
    out: Path,
    quant: str | None = None,
    *,
    force: bool = False,
) -> ExportResult:
    """Export one version to `out` in `fmt`, verified by loading it in the runtime it is for.

    Args:
        version_dir: `<data>/versions/vX.Y.Z/` with `adapters.safetensors`,
            `adapter_config.json` and `manifest.json`.
        base_model_dir: Local directory of the version's base model.
        fmt: One of FORMATS.
        out: Destination folder: new, empty, or an earlier export (its export.json lists exactly
            its files), replaced whole; any other folder is refused.
        quant: GGUF type for `gguf`/`ollama` (QUANTS; default q4_k_m); not allowed otherwise.
        force: Rebuild even when `out` already holds an identical export.

    Returns:
        The files written, notes and verification results.

    Raises:
        BadRequest: Unknown format or quant.
        NotFound: No such version folder.
        ModelUnavailable: The base model folder is missing.
        Conflict: `out` exists and is not (only) a SAM Brain export.
        BackendUnavailable: A tool the format needs is not installed.
        ExportFailed: The input is corrupt, or an artifact failed to build or to verify.
    """
    version_dir, base_model_dir, out = Path(version_dir), Path(base_model_dir), Path(out)
    quant = _check_args(fmt, quant)
    if not version_dir.is_dir():
        raise NotFound(f"version folder {version_dir} does not exist")
    if not (base_model_dir / "config.json").is_file():
        raise ModelUnavailable(f"base model {base_model_dir} has no config.json")
    _check_adapter(version_dir)
    if fmt in ("gguf", "ollama"):
        gguf.llama_cpp_module()
        gguf.find_converter()
    check_destination(out)
    fingerprint = _fingerprint(version_dir, base_model_dir, fmt, quant)
    if not force and (previous := _previous(out, fingerprint)) is not None:
        return previous

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        job = _Job(
            version=version_dir.name,
            adapter=version_dir,
            base=base_model_dir,
            stage=stage,
            work=stage / ".work",
            quant=quant or "",
            notes=[],
        )
        job.work.mkdir()
        checks = _BUILDERS[fmt](job)
        shutil.rmtree(job.work)
        files = {f.name: _file_record(f) for f in sorted(stage.iterdir())}
        record = {
            "schema": SCHEMA,
            "version": job.version,
            "format": fmt,
            "quant": quant,
            "fingerprint": fingerprint,
            "base_model": str(base_model_dir),
            "files": files,
            "notes": job.notes,
            "checks": checks,
        }
        (stage / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        _swap(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    sizes = {name: int(info["bytes"]) for name, info in files.items()}
    return ExportResult(job.version, fmt, out, quant, sizes, job.notes, checks)


def _check_args(fmt: str, quant: str | None) -> str | None:
    if fmt not in FORMATS:
        raise BadRequest(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt in ("gguf", "ollama"):
        quant = (quant or DEFAULT_QUANT).lower()
        if quant not in QUANTS:
            raise BadRequest(f"unknown quant {quant!r}; choose one of {', '.join(QUANTS)}")
        return quant
    if quant:
        raise BadRequest(f"--quant applies to gguf and ollama exports, not {fmt}")
    return None


def _check_adapter(version_dir: Path) -> None:
    """The adapter files are there, match the manifest checksum and parse as safetensors."""
    from backends.adapter_format import read_safetensors

    name = version_dir.name
    missing = [n for n in ADAPTER_FILES if not (version_dir / n).is_file()]
    if missing:
        raise ExportFailed(f"{name}: missing {', '.join(missing)} in {version_dir}")
    expected = _read_json(version_dir / "manifest.json").get("checksum")
    if expected and checksum_dir(version_dir) != expected:
        raise ExportFailed(f"{name}: files do not match the manifest checksum (changed or corrupt)")
    config = _read_json(version_dir / "adapter_config.json")
    if config.get("fine_tune_type", "lora") not in ("lora", "dora") or not config.get(
        "lora_parameters"
    ):
        raise ExportFailed(f"{name}: adapter_config.json does not describe a LoRA adapter")
    try:
        tensors, _ = read_safetensors(version_dir / "adapters.safetensors")
    except (BadRequest, ValueError, KeyError, TypeError) as err:
        raise ExportFailed(f"{name}: adapters.safetensors is corrupt ({err})") from err
    if not any(k.endswith(".lora_a") for k in tensors):
        raise ExportFailed(f"{name}: adapters.safetensors holds no LoRA matrices")


def _fingerprint(version_dir: Path, base: Path, fmt: str, quant: str | None) -> str:
    """Inputs that decide the output: adapter bytes, base files, format, tool versions."""
    h = hashlib.sha256()
    h.update(json.dumps([SCHEMA, fmt, quant, checksum_dir(version_dir)]).encode())
    for f in sorted(p for p in base.iterdir() if p.is_file()):
        size = f.stat().st_size
        # Weights are hashed by name and size: re-reading gigabytes on every export is too slow.
        digest = _sha256(f) if size < (64 << 20) else str(size)
        h.update(f"{f.name}\0{digest}\0".encode())
    for tool in _TOOLS:
        try:
            h.update(f"{tool}={metadata.version(tool)}\0".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{tool}=none\0".encode())
    return h.hexdigest()


def _previous(out: Path, fingerprint: str) -> ExportResult | None:
    """The export already at `out`, if it was built from the same inputs and is intact."""
    record = _read_json(out / RECORD)
    if record.get("fingerprint") != fingerprint:
        return None
    files: dict[str, Any] = record.get("files", {})
    for name, info in files.items():
        if not (out / name).is_file() or _file_record(out / name) != info:
            return None
    return ExportResult(
        version=str(record["version"]),
        fmt=str(record["format"]),
        out=out,
        quant=record.get("quant"),
        files={name: int(info["bytes"]) for name, info in files.items()},
        notes=list(record.get("notes", [])),
        checks=list(record.get("checks", [])),
        skipped=True,
    )


def check_destination(out: Path) -> None:
    """`out` is new, an empty folder, or an export this module wrote; anything else is refused.

    Ours means `export.json` lists exactly the regular files in the folder: a user's folder that
    merely holds a file named export.json (or one we wrote, with files added since) is not ours,
    and replacing it would delete what the user put there.
    """
    if out.is_symlink():
        raise Conflict(f"{out} is a symbolic link; give the real folder (refusing to replace it)")
    if not out.exists():
        return
    if not out.is_dir():
        raise Conflict(f"{out} exists and is not a folder; refusing to overwrite it")
    entries = list(out.iterdir())
    if not entries:
        return
    listed = _read_json(out / RECORD).get("files")
    ours = isinstance(listed, dict) and {p.name for p in entries} == {*listed, RECORD}
    if not ours or any(p.is_symlink() or not p.is_file() for p in entries):
        raise Conflict(
            f"{out} exists and is not a SAM Brain export (it holds files export.json does not"
            " list); refusing to overwrite it: choose a new or empty folder"
        )


def _swap(stage: Path, out: Path) -> None:
    """Put the finished export in place; an older export at `out` is removed only afterwards.

    The stage comes from mkdtemp (mode 0700): it takes the mode of the folder it replaces, or
    the umask's default for a new one, so an export never changes who may read the folder.
    """
    if out.is_dir():
        mode = out.stat().st_mode & 0o7777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o777 & ~umask
    os.chmod(stage, mode)
    check_destination(out)  # again: the build took minutes and the folder may have changed
    old = None
    if out.exists():
        # A fresh name of our own: whatever rmtree removes below is only the replaced export.
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old)
    os.replace(stage, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _file_record(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": _sha256(path)}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
