"""A home: the config plus the resources opened on its data directory, in one place.

Both the daemon and the CLI open a `Home`, use it, and close it; nothing else opens the store or
the pool. Layout under the data directory:

    state.db         runs, versions, cursors, events (SQLite, WAL)
    pool/            the LanceDB sample pool (+ write.lock)
    dedup.idx        the persisted MinHash index (snapshot; dedup.idx.journal holds later saves)
    versions/        vX.Y.Z/ adapter folders, current.txt
    runs/<run_id>/   dataset, spec, log and checkpoints of each training run
    reports/         one JSON data report per ingest pass
    archive/         gzip copies of raw transcripts
    distill/         inbox/, processed/, rejects.jsonl
    daemon.lock      held by the running daemon
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sam_brain.config import Config, data_dir
from sam_brain.pool import Pool
from sam_brain.store import Store
from sam_brain.versions import Versions


@dataclass
class Home:
    """Opened resources of one SAM Brain home."""

    config: Config
    data: Path
    store: Store
    pool: Pool
    versions: Versions

    @classmethod
    def open(cls, config: Config) -> Home:
        data = data_dir(config)
        data.mkdir(parents=True, exist_ok=True)
        store = Store(data / "state.db")
        return cls(
            config=config,
            data=data,
            store=store,
            pool=Pool(data / "pool"),
            versions=Versions(store, data / "versions"),
        )

    def close(self) -> None:
        self.store.close()

    @property
    def runs_dir(self) -> Path:
        return self.data / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.data / "reports"

    @property
    def archive_dir(self) -> Path:
        return self.data / "archive"

    @property
    def dedup_path(self) -> Path:
        return self.data / "dedup.idx"

    @property
    def distill_inbox(self) -> Path:
        inbox = self.config.sources.distill_inbox
        return Path(inbox).expanduser() if inbox else self.data / "distill" / "inbox"

    @property
    def lock_path(self) -> Path:
        return self.data / "daemon.lock"
