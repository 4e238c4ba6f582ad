"""Distillation store: validated teacher records (reasoning, corrections, preferences) become samples.

Records arrive as JSON lines dropped in an inbox folder or posted to `POST /api/distill`. Each
line is checked by `validate_record`; bad lines go to an append-only rejects file with their
reason. A fully read inbox file is moved into `processed_dir` in the same pass, and the pass
returns a cursor `distill:done:<name>` for it; a processed file without that cursor (the daemon
stopped before the samples were stored) is read again on the next pass, so nothing is lost and,
once stored, nothing is read twice. Writers should create files atomically (write `x.tmp`, then
rename to `x.jsonl`); a file modified in the last `settle_seconds` or not ending in a newline is
left for a later pass.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam_brain.errors import BadRequest, CollectorFailed
from sam_brain.pipeline.exclude import PathRules, file_ident, skip_excluded
from sam_brain.protocols import CollectResult, Cursors, Sample, stable_id

log = logging.getLogger(__name__)

# kind -> (required text fields, optional text fields)
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "reasoning": (("prompt", "answer"), ("reasoning",)),
    "correction": (("prompt", "wrong_answer", "corrected_answer"), ("explanation",)),
    "preference": (("prompt", "chosen", "rejected"), ()),
}
META_FIELDS = ("id", "source", "teacher", "created_at", "system", "tags")
MAX_TEXT_CHARS = 64_000
MAX_LABEL_CHARS = 200  # id, source, teacher, created_at, one tag
MAX_TAGS = 32
MAX_REJECT_RAW_CHARS = 10_000  # the full line stays in the processed file


def validate_record(obj: object) -> Sample:
    """Check one distillation record and build its main sample.

    Args:
        obj: a decoded JSON value, expected to be an object with a known `kind`.

    Returns:
        The record's SFT sample, or its preference sample for `kind="preference"`. A correction
        also yields a preference pair; `record_samples` returns both.

    Raises:
        BadRequest: with a precise reason (unknown kind, missing/empty field, wrong type,
            unknown field, too long, identical alternatives).
    """
    return record_samples(obj)[0]


def record_samples(obj: object) -> list[Sample]:
    """All samples of one record: one, or two for a correction (SFT + DPO pair). See `validate_record`."""
    rec = _checked(obj)
    kind = rec["kind"]
    base = _record_id(rec)
    key = f"distill:{base}"
    # Records about the same prompt share a group, so no prompt sits in both train and validation.
    group = "distill:" + stable_id(rec["prompt"].strip())
    meta: dict[str, Any] = {"record_kind": kind}
    for name in ("id", "source", "teacher", "created_at", "tags"):
        if name in rec:
            meta["record_id" if name == "id" else name] = rec[name]
    system = [{"role": "system", "content": rec["system"]}] if rec.get("system") else []
    user = [*system, {"role": "user", "content": rec["prompt"]}]

    def make(sample_id: str, tier: str, messages: list[dict[str, Any]], **extra: Any) -> Sample:
        return Sample(
            id=sample_id,
            source="distill",
            source_key=key,
            group=group,
            messages=messages,
            strategy="distill",
            tier=tier,
            meta=dict(meta),
            **extra,
        )

    if kind == "preference":
        return [
            make(base, "B", user, kind="preference", chosen=rec["chosen"], rejected=rec["rejected"])
        ]
    if kind == "reasoning":
        reasoning = rec.get("reasoning", "").strip()
        # The chain comes before the answer so the model learns to reason first.
        answer = f"{reasoning}\n\n{rec['answer']}" if reasoning else rec["answer"]
        sample = make(
            base, "A" if reasoning else "B", [*user, {"role": "assistant", "content": answer}]
        )
        sample.meta["has_reasoning"] = bool(reasoning)
        return [sample]
    sft = make(base, "A", [*user, {"role": "assistant", "content": rec["corrected_answer"]}])
    if rec.get("explanation"):
        sft.meta["explanation"] = rec["explanation"]
    pair = make(
        stable_id(base, "preference"),
        "A",
        user,
        kind="preference",
        chosen=rec["corrected_answer"],
        rejected=rec["wrong_answer"],
    )
    return [sft, pair]


def _checked(obj: object) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise BadRequest(f"a record must be a JSON object, got {_type_name(obj)}")
    kind = obj.get("kind")
    if kind is None:
        raise BadRequest(f"field 'kind' is missing (one of: {', '.join(sorted(KINDS))})")
    if not isinstance(kind, str) or kind not in KINDS:
        raise BadRequest(f"unknown kind {kind!r} (one of: {', '.join(sorted(KINDS))})")
    required, optional = KINDS[kind]
    allowed = {"kind", *required, *optional, *META_FIELDS}
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise BadRequest(
            f"{kind}: unknown field {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    for name in required:
        if name not in obj:
            raise BadRequest(f"{kind}: field {name!r} is missing")
    for name in (*required, *optional, "system"):
        if name in obj:
            _text(kind, name, obj[name], MAX_TEXT_CHARS, allow_empty=name not in required)
    for name in ("source", "teacher"):
        if name in obj:
            _text(kind, name, obj[name], MAX_LABEL_CHARS, allow_empty=False)
    if "id" in obj:
        if isinstance(obj["id"], bool) or not isinstance(obj["id"], str | int):
            raise BadRequest(
                f"{kind}: field 'id' must be a string or integer, got {_type_name(obj['id'])}"
            )
        _text(kind, "id", str(obj["id"]), MAX_LABEL_CHARS, allow_empty=False)
    if "created_at" in obj:
        value = obj["created_at"]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise BadRequest(
                f"{kind}: field 'created_at' must be a string or number, got {_type_name(value)}"
            )
        if isinstance(value, str):
            _text(kind, "created_at", value, MAX_LABEL_CHARS, allow_empty=False)
    if "tags" in obj:
        tags = obj["tags"]
        if not isinstance(tags, list):
            raise BadRequest(
                f"{kind}: field 'tags' must be a list of strings, got {_type_name(tags)}"
            )
        if len(tags) > MAX_TAGS:
            raise BadRequest(f"{kind}: field 'tags' is too long ({len(tags)} > {MAX_TAGS} tags)")
        for i, tag in enumerate(tags):
            _text(kind, f"tags[{i}]", tag, MAX_LABEL_CHARS, allow_empty=False)
    pairs = {
        "correction": ("wrong_answer", "corrected_answer"),
        "preference": ("rejected", "chosen"),
    }
    if kind in pairs:
        bad, good = pairs[kind]
        if obj[bad].strip() == obj[good].strip():
            raise BadRequest(f"{kind}: {good!r} and {bad!r} are identical")
    return dict(obj)


def _text(kind: str, name: str, value: object, limit: int, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise BadRequest(f"{kind}: field {name!r} must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise BadRequest(f"{kind}: field {name!r} is empty")
    if len(value) > limit:
        raise BadRequest(f"{kind}: field {name!r} is too long ({len(value)} > {limit} characters)")


def _type_name(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(
        type(value), "number" if isinstance(value, int | float) else type(value).__name__
    )


def _record_id(rec: dict[str, Any]) -> str:
    """From the record's own id, else from its content (not its timestamp or teacher label)."""
    if "id" in rec:
        return stable_id("distill", "id", str(rec["id"]))
    required, optional = KINDS[rec["kind"]]
    content = {k: rec[k] for k in ("kind", "system", *required, *optional) if k in rec}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return stable_id("distill", "content", canonical)


class DistillationCollector:
    """Reads `*.jsonl` record files from an inbox (implements `protocols.Collector`).

    Args:
        inbox: folder that writers drop `*.jsonl` files into.
        rejects_path: append-only JSON-lines file of rejected lines with their reasons.
        processed_dir: where fully read inbox files are moved.
        settle_seconds: a file modified more recently than this is treated as still being written.

    `collect` raises `CollectorFailed` only when a read file cannot be moved out of the inbox
    (permissions); the file then stays in the inbox and is read again on the next pass.
    """

    name = "distill"

    def __init__(
        self,
        inbox: Path,
        rejects_path: Path,
        processed_dir: Path,
        settle_seconds: float = 2.0,
        exclude: Sequence[str] = (),
    ) -> None:
        self.inbox = Path(inbox)
        self.exclude = PathRules(exclude)  # `sources.exclude`: such inbox files are not read
        self.rejects_path = Path(rejects_path)
        self.processed_dir = Path(processed_dir)
        self.settle_seconds = settle_seconds

    def collect(self, cursors: Cursors, paths: Sequence[Path] | None = None) -> CollectResult:
        """Ingest complete inbox files (only `paths` when given) and re-read unconfirmed ones."""
        result = CollectResult()
        for done in (
            sorted(self.processed_dir.glob("*.jsonl")) if self.processed_dir.is_dir() else []
        ):
            if cursors.get_cursor(_done_key(done)) is None:
                # Moved last time but the samples were never confirmed stored; rejects already written.
                data = done.read_bytes()
                self._parse(done.name, data, result, write_rejects=False)
                result.cursors[_done_key(done)] = hashlib.sha256(data).hexdigest()
                log.info("distill: re-reading %s (its samples were not confirmed stored)", done)
        if not self.inbox.is_dir():
            result.skipped["missing_inbox"] += 1
            return result
        wanted = None if paths is None else {Path(p).absolute() for p in paths}
        for path in sorted(self.inbox.glob("*.jsonl")):
            if self.exclude.match(path.absolute()):
                skip_excluded(cursors, result, f"distill:{path.name}", file_ident(path))
            elif wanted is None or path.absolute() in wanted:
                self._ingest_file(path, result)
        _dedupe(result)
        return result

    def ingest_records(self, records: list[object]) -> tuple[CollectResult, list[dict[str, Any]]]:
        """Validate records posted to the API.

        Returns:
            The accepted samples, and one `{"index", "reason"}` per rejected record (also appended
            to the rejects file).
        """
        result = CollectResult()
        rejects: list[dict[str, Any]] = []
        written: list[dict[str, Any]] = []
        for index, obj in enumerate(records):
            try:
                samples = record_samples(obj)
            except BadRequest as err:
                result.skipped["invalid_record"] += 1
                rejects.append({"index": index, "reason": str(err)})
                raw = json.dumps(obj, ensure_ascii=False, default=str)[:MAX_REJECT_RAW_CHARS]
                written.append({"file": "api", "line": index, "reason": str(err), "raw": raw})
                continue
            for sample in samples:
                sample.meta.update({"origin": "api", "index": index})
                result.samples.append(sample)
                result.replace_keys.add(sample.source_key)
        self._append_rejects(written)
        _dedupe(result)
        return result, rejects

    def _ingest_file(self, path: Path, result: CollectResult) -> None:
        try:
            if time.time() - path.stat().st_mtime < self.settle_seconds:
                result.skipped["incomplete"] += 1
                return
            data = path.read_bytes()
        except FileNotFoundError:  # taken by a concurrent pass or its writer
            return
        if data and not data.endswith(b"\n"):
            result.skipped["incomplete"] += 1
            return
        self._parse(path.name, data, result, write_rejects=True)
        dest = self._move(path)
        result.cursors[_done_key(dest)] = hashlib.sha256(data).hexdigest()

    def _parse(self, name: str, data: bytes, result: CollectResult, write_rejects: bool) -> None:
        rejects: list[dict[str, Any]] = []
        for number, raw in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                result.skipped["blank_line"] += 1
                continue
            try:
                samples = record_samples(json.loads(raw))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                result.skipped["invalid_json"] += 1
                reason = f"invalid JSON: {err}"
            except BadRequest as err:
                result.skipped["invalid_record"] += 1
                reason = str(err)
            else:
                for sample in samples:
                    sample.meta.update({"origin": "inbox", "file": name, "line": number})
                    result.samples.append(sample)
                    result.replace_keys.add(sample.source_key)
                continue
            raw_text = text[:MAX_REJECT_RAW_CHARS]
            rejects.append({"file": name, "line": number, "reason": reason, "raw": raw_text})
        if write_rejects:
            self._append_rejects(rejects)

    def _append_rejects(self, rejects: list[dict[str, Any]]) -> None:
        if not rejects:
            return
        self.rejects_path.parent.mkdir(parents=True, exist_ok=True)
        with self.rejects_path.open("a", encoding="utf-8") as fh:
            for reject in rejects:
                fh.write(json.dumps(reject, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def _move(self, path: Path) -> Path:
        """Move into processed_dir without overwriting an earlier file of the same name."""
        self.processed_dir.mkdir(parents=True, exist_ok=True)
        dest = self.processed_dir / path.name
        n = 1
        while dest.exists():
            dest = self.processed_dir / f"{path.stem}.{n}{path.suffix}"
            n += 1
        try:
            try:
                os.replace(path, dest)
            except OSError as err:
                if err.errno != errno.EXDEV:
                    raise
                # Another filesystem: copy, make it durable, then rename into place.
                tmp = dest.with_name(dest.name + ".part")
                tmp.write_bytes(path.read_bytes())
                with tmp.open("rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(tmp, dest)
                path.unlink()
            _fsync_dir(self.processed_dir)
        except OSError as err:
            raise CollectorFailed(f"distill: cannot move {path} to {dest}: {err}") from err
        return dest


def _done_key(processed: Path) -> str:
    return f"distill:done:{processed.name}"


def _dedupe(result: CollectResult) -> None:
    """Keep the last sample per id; the same record twice in one pass is counted, not stored twice."""
    by_id: dict[str, Sample] = {}
    for sample in result.samples:
        if sample.id in by_id:
            result.skipped["duplicate_record"] += 1
        by_id[sample.id] = sample
    result.samples = list(by_id.values())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
