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
    trainings/NAME/  versions/ and runs/ of the named training NAME (see sam_brain/trainings.py)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from sam_brain.config import DEFAULT_TRAINING, Config, data_dir
from sam_brain.errors import StateDamaged
from sam_brain.pool import Pool
from sam_brain.recovery import rebuild_versions
from sam_brain.store import Store
from sam_brain.trainings import check_name, lineage_dir, names, scoped_config
from sam_brain.versions import Versions


def pool_damaged(root: Path, detail: str) -> StateDamaged:
    """The one line naming a damaged pool and both ways back."""
    detail = detail.splitlines()[0][:200] if detail else "unreadable"
    return StateDamaged(
        f"the sample pool {root} is damaged ({detail}); restore its previous LanceDB version"
        " with `samctl doctor --repair`, or rebuild it: move the folder aside and run"
        " `samctl ingest sessions --from-archive`"
    )


@dataclass
class Home:
    """Opened resources of one SAM Brain home.

    The pool opens on first use: commands that do not need it (`samctl list`, `status`) keep
    working when it is damaged. `rebuilt` names versions whose rows were rebuilt at open.
    """

    config: Config
    data: Path
    store: Store
    versions: Versions
    rebuilt: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # problems found and handled, for status
    training: str = DEFAULT_TRAINING  # whose lineage `store`, `versions` and `runs_dir` are
    parent: Home | None = None  # the default training's home a named training's view came from
    _pool: Pool | None = None
    _pool_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def open(cls, config: Config) -> Home:
        """Open the home; a state.db that lost its version rows is rebuilt from the folders.

        Raises:
            StateDamaged: state.db is not SQLite or fails its integrity check.
        """
        data = data_dir(config)
        data.mkdir(parents=True, exist_ok=True)
        store = Store(data / "state.db")
        versions = Versions(store, data / "versions")
        rebuilt = rebuild_versions(store, versions.root)
        notices = []
        if rebuilt:
            versions.write_index()
            notices.append(
                f"state.db had lost its versions: {', '.join(rebuilt)} rebuilt from their folders"
            )
        return cls(config, data, store, versions, rebuilt, notices)

    def for_training(self, name: str) -> Home:
        """This home as training `name` sees it: the same pool, events and cursors, its own
        config (`trainings.scoped_config`), runs, versions and canary. The default's is `self`.

        Raises:
            NotFound: `name` is not a configured training.
        """
        root = self.parent or self
        if check_name(root.config, name) == DEFAULT_TRAINING:
            return root
        store = root.store.scoped(name)
        versions = Versions(store, lineage_dir(root.data, name) / "versions")
        config = scoped_config(root.config, name)
        view = Home(config, root.data, store, versions, training=name, parent=root)
        rebuilt = rebuild_versions(store, versions.root)  # its rows lost, its folders still there
        if rebuilt:
            versions.write_index()
            root.notices.append(f"training {name}: versions {', '.join(rebuilt)} rebuilt")
        return view

    def trainings(self) -> list[Home]:
        """Every training's view, the default first."""
        root = self.parent or self
        return [root.for_training(n) for n in names(root.config)]

    @property
    def pool(self) -> Pool:
        """The sample pool, opened now if not yet.

        Raises:
            StateDamaged: LanceDB cannot open it (damaged manifest or data).
        """
        if self.parent is not None:  # one pool for every training
            return self.parent.pool
        with self._pool_lock:  # the daemon's threads may ask first at the same time
            if self._pool is None:
                try:
                    self._pool = Pool(self.data / "pool")
                except (RuntimeError, OSError) as err:  # lance reports damage as RuntimeError
                    raise pool_damaged(self.data / "pool", str(err)) from err
            return self._pool

    def close(self) -> None:
        if self.parent is None:  # a training's view shares the default's connection
            self.store.close()

    @property
    def runs_dir(self) -> Path:
        return lineage_dir(self.data, self.training) / "runs"

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
