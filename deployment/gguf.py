"""GGUF for llama.cpp, Ollama and LM Studio: convert with llama.cpp's scripts, quantize, Modelfile.

The converters (`convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, with their `conversion/` and
`gguf-py/` packages) ship only in llama-cpp-python's source distribution, under
`vendor/llama.cpp/`; `install_converter` extracts them, for the installed llama-cpp-python
version, into `<venv>/share/llama.cpp` (`python -m deployment.gguf install-converter`). They run
in a subprocess so their `gguf-py` never mixes with ours. The converter names a tokenizer's
pre-tokenizer by hashing its output and refuses unknown hashes; when the tokenizer's split regex is
exactly Qwen2's (SAM Brain's tiny models) we tell it `qwen2`. Quantization goes through
llama.cpp's own quantizer via `llama_cpp.llama_model_quantize`, so no `llama-quantize` binary is
needed.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from sam_brain.errors import BackendUnavailable, ExportFailed
from sam_brain.masking import QWEN2_SPLIT_REGEX

CONVERTER_ENV = "SAM_BRAIN_LLAMA_CPP"
CONVERTER_FILES = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "gguf-py/gguf/__init__.py")
QUANT_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0"}  # fmt: skip
CHATML_STOPS = ("<|im_end|>", "<|endoftext|>")

# Runs one converter script with the unknown-pre-tokenizer fallback patched in (argv: dir,
# script, fallback, args...). `conversion.base.TextModel` is where current llama.cpp keeps it.
_SHIM = """
import runpy, sys
from pathlib import Path
root, script, fallback, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
sys.path[:0] = [str(root), str(root / "gguf-py")]
try:
    from conversion import base
except ImportError:
    base = None
if base is not None and fallback:
    original = base.TextModel.get_vocab_base_pre
    def get_vocab_base_pre(self, tokenizer):
        try:
            return original(self, tokenizer)
        except NotImplementedError:
            return fallback
    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = [str(root / script), *args]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def default_converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "llama.cpp"


def find_converter() -> Path:
    """The folder holding llama.cpp's conversion scripts.

    `$SAM_BRAIN_LLAMA_CPP` when set (a llama.cpp checkout or an extracted sdist's
    `vendor/llama.cpp`), else `<venv>/share/llama.cpp`.

    Raises:
        BackendUnavailable: The scripts are not there; the message says how to get them.
    """
    env = os.environ.get(CONVERTER_ENV)
    root = Path(env).expanduser() if env else default_converter_dir()
    missing = _missing(root)
    if missing:
        raise BackendUnavailable(
            f"GGUF export needs llama.cpp's converter scripts; {root} lacks {', '.join(missing)}."
            f" Run `{Path(sys.executable).name} -m deployment.gguf install-converter` (extracts"
            f" them from the llama-cpp-python sdist) or set {CONVERTER_ENV} to a llama.cpp checkout"
        )
    return root


def _missing(root: Path) -> list[str]:
    return [f for f in CONVERTER_FILES if not (root / f).is_file()]


def llama_cpp_module() -> Any:
    """`llama_cpp`, or a BackendUnavailable saying how to install it."""
    try:
        import llama_cpp
    except ImportError as err:
        raise BackendUnavailable(
            "GGUF export needs llama-cpp-python (pip install llama-cpp-python; builds llama.cpp"
            " from source in ~5 min)"
        ) from err
    return llama_cpp


def pretokenizer_fallback(model_dir: Path) -> str:
    """`qwen2` when the tokenizer splits text exactly as Qwen2 does, else "" (no fallback)."""
    try:
        pre = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))[
            "pre_tokenizer"
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    steps = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    return "qwen2" if regexes == [QWEN2_SPLIT_REGEX] else ""


def _run(script: str, fallback: str, args: list[str], what: str) -> None:
    root = find_converter()
    cmd = [sys.executable, "-c", _SHIM, str(root), script, fallback, *args]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()
        if "pre-tokenizer was not recognized" in output:
            raise ExportFailed(
                f"{what} failed: llama.cpp's converter does not know this tokenizer's"
                " pre-tokenizer (its hash is not in convert_hf_to_gguf.py and its split regex is"
                " not Qwen2's); a newer llama-cpp-python/converter may know it"
            )
        tail = "\n".join(output.splitlines()[-6:])
        raise ExportFailed(f"{what} failed ({script}, exit {proc.returncode}):\n{tail}")


def convert_model(model_dir: Path, out_file: Path, name: str, outtype: str = "f16") -> Path:
    """Convert a Hugging Face model folder to one GGUF file (`outtype` f32, f16, bf16 or q8_0)."""
    args = [str(model_dir), "--outfile", str(out_file), "--outtype", outtype, "--model-name", name]
    _run("convert_hf_to_gguf.py", pretokenizer_fallback(model_dir), args, "GGUF conversion")
    return out_file


def convert_lora(peft_dir: Path, base_dir: Path, out_file: Path, outtype: str = "f16") -> Path:
    """Convert a PEFT LoRA adapter to a GGUF LoRA that llama.cpp applies at load time."""
    args = [
        str(peft_dir),
        "--base",
        str(base_dir),
        "--outfile",
        str(out_file),
        "--outtype",
        outtype,
    ]
    _run("convert_lora_to_gguf.py", "", args, "GGUF LoRA conversion")
    return out_file


def quantize(src: Path, dst: Path, quant: str) -> Path:
    """Quantize a GGUF with llama.cpp's quantizer (`quant` in QUANT_FTYPES)."""
    llama_cpp = llama_cpp_module()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = 0  # all cores
    # llama.cpp logs every tensor (and each fallback type) through this logger; keep errors only.
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), params)
    finally:
        log.setLevel(level)
    if rc != 0 or not dst.is_file():
        raise ExportFailed(f"llama.cpp could not quantize {src.name} to {quant} (code {rc})")
    return dst


def modelfile(gguf_name: str, base_dir: Path) -> str:
    """An Ollama Modelfile for a ChatML model: FROM, TEMPLATE, SYSTEM, stops and sampling."""
    config = _json(base_dir / "tokenizer_config.json")
    template = str(config.get("chat_template") or "")
    jinja = base_dir / "chat_template.jinja"
    if not template and jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
    if "<|im_start|>" not in template:
        raise ExportFailed(
            "the Ollama export writes a ChatML template, but this base model's chat template is"
            " not ChatML; use --format gguf and give Ollama the template yourself"
        )
    gen = _json(base_dir / "generation_config.json")
    params = [f'PARAMETER stop "{s}"' for s in CHATML_STOPS]
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"),
                         ("repeat_penalty", "repetition_penalty")):  # fmt: skip
        if theirs in gen:
            params.append(f"PARAMETER {ours} {gen[theirs]}")
    system = _default_system(base_dir)
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{OLLAMA_CHATML}"""']
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join([*lines, *params]) + "\n"


# Ollama's own qwen2.5 template without the tool-calling branches (Go text/template).
OLLAMA_CHATML = """{{- if .Messages }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def _default_system(base_dir: Path) -> str:
    """The system prompt the chat template inserts when none is given (Qwen does), or ""."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    text = str(tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False))
    head = "<|im_start|>system\n"
    if not text.startswith(head):
        return ""
    return text[len(head) : text.find("<|im_end|>")]


def check_modelfile(path: Path) -> dict[str, Any]:
    """Check a Modelfile against its GGUF: FROM points at it, every stop string is one token."""
    text = path.read_text(encoding="utf-8")
    source = next((ln[5:].strip() for ln in text.splitlines() if ln.startswith("FROM ")), "")
    if not source or not (path.parent / source).is_file():
        raise ExportFailed(f"{path.name}: FROM {source} is not a file next to it")
    stops = [ln.split('"')[1] for ln in text.splitlines() if ln.startswith("PARAMETER stop")]
    llm = llama_cpp_module().Llama(
        model_path=str(path.parent / source), vocab_only=True, verbose=False
    )
    try:
        bad = [s for s in stops if len(llm.tokenize(s.encode(), add_bos=False, special=True)) != 1]
    finally:
        llm.close()
    if bad or not stops:
        raise ExportFailed(f"{path.name}: stop strings {bad or stops} are not single GGUF tokens")
    return {"artifact": path.name, "runtime": "Modelfile check", "from": source, "stops": stops}


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def install_converter(dest: Path | None = None) -> Path:
    """Extract llama.cpp's converter scripts from the installed llama-cpp-python's sdist.

    Downloads `llama-cpp-python==<installed version>` as a source archive with pip (no build),
    and copies `vendor/llama.cpp/{convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/,
    gguf-py/, LICENSE}` into `dest` (default `<venv>/share/llama.cpp`).
    """
    version = llama_cpp_module().__version__
    dest = dest or default_converter_dir()
    keep = (
        "convert_hf_to_gguf.py",
        "convert_lora_to_gguf.py",
        "conversion/",
        "gguf-py/",
        "LICENSE",
    )
    with tempfile.TemporaryDirectory() as tmp:
        # Source-only for this one package: its build requirements may still come as wheels.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
               "llama-cpp-python", "-q", "-d", tmp, f"llama-cpp-python=={version}"]  # fmt: skip
        if subprocess.run(cmd, check=False).returncode != 0:
            raise BackendUnavailable(f"pip could not download the llama-cpp-python {version} sdist")
        archive = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(archive) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name.split("/vendor/llama.cpp/", 1)
                if len(rel) == 2 and rel[1].startswith(keep) and (m.isfile() or m.isdir()):
                    m.name = rel[1]
                    members.append(m)
            dest.mkdir(parents=True, exist_ok=True)
            tar.extractall(dest, members=members, filter="data")
    if missing := _missing(dest):
        raise BackendUnavailable(f"the sdist lacked {', '.join(missing)}; is it too old?")
    return dest


if __name__ == "__main__":
    if sys.argv[1:] != ["install-converter"]:
        sys.exit("usage: python -m deployment.gguf install-converter")
    print(install_converter())
