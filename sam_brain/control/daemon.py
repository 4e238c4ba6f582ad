"""The daemon: `sam-brain serve [--config PATH] [--host H] [--port P]`.

One asyncio process per home (an flock on `daemon.lock`): it watches the sources, ingests what
changes, lets the coordinator train when enough new samples wait, and serves the API. SIGTERM or
SIGINT stop it cleanly: queued and running chat requests are stopped at once, a running training
subprocess is asked to checkpoint and stop, the watchers and the server close, the lock is
released, and the process exits without the interpreter's slow teardown (within 10 s in all).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO, Any, NoReturn

from aiohttp import web

from deployment import canary
from deployment.rollback import RollbackMonitor
from deployment.serving import ChatServer
from sam_brain import registry
from sam_brain.config import Config
from sam_brain.config_load import load_config
from sam_brain.control.api import make_app
from sam_brain.control.apitoken import is_loopback, token_path
from sam_brain.control.app import AppContext
from sam_brain.control.chat_setup import make_chat, make_exclusive, resolve_base
from sam_brain.control.security import make_policy
from sam_brain.control.watchers import Watchers
from sam_brain.doctor import heal_active
from sam_brain.errors import AlreadyRunning, SamBrainError
from sam_brain.home import Home, pool_damaged
from sam_brain.pipeline.archive_prune import prune_archive
from sam_brain.pipeline.exclude import PathRules
from sam_brain.pipeline.ingest import make_collectors, store_result
from sam_brain.protocols import Collector
from sam_brain.train.dataset import base_model_ref
from sam_brain.train.exports import export_active
from sam_brain.train.policies import canary_policy, health_limits
from sam_brain.train.resume import recover_interrupted
from sam_brain.train.runs import prune_runs
from sam_brain.train.scheduler import Coordinator

log = logging.getLogger("sam_brain")
SHUTDOWN_GRACE_S = 3.0  # SIGTERM must stop the daemon within 10 s whatever is in flight


@contextlib.contextmanager
def instance_lock(path: Path) -> Iterator[IO[str]]:
    """Hold the home's daemon lock; a second daemon on the same home fails at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")  # noqa: SIM115 - held open for the daemon's lifetime
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        raise AlreadyRunning(
            f"another daemon (pid {pid}) is running on this home ({path})"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    try:
        yield fh
    finally:
        fcntl.flock(fh, fcntl.LOCK_UN)
        fh.close()


class Daemon:
    """Wires home, collectors, watchers, coordinator and API together."""

    def __init__(self, config: Config, host: str, port: int) -> None:
        self.config = config
        self.host = host
        self.port = port
        self.stop_event = asyncio.Event()
        self.ingest_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()  # strong refs so tasks are not collected
        self._pruned_at = float("-inf")
        self._active_seen: tuple[object, ...] = ()
        self.chat: ChatServer | None = None

    async def ingest(self, kind: str, paths: list[Path] | None = None) -> None:
        collector: Collector | None = self.collectors.get(kind)
        if collector is None:
            return
        async with self.ingest_lock:
            try:
                result = await asyncio.to_thread(collector.collect, self.home.store, paths)
                report = await asyncio.to_thread(store_result, self.home, kind, result)
            except SamBrainError as err:
                log.warning("ingest %s failed: %s", kind, err)
                return
            except (RuntimeError, OSError) as err:  # a damaged pool file: one line, not a trace
                log.warning("ingest %s failed: %s (run `samctl doctor`)", kind, err)
                return
            except Exception:  # a bad source must never stop the daemon
                log.exception("ingest %s crashed", kind)
                return
        if report.collected or report.deleted:
            log.info(
                "ingest %s: %d collected, %d stored, %d dropped, pool v%d",
                kind,
                report.collected,
                report.stored,
                sum(report.dropped.values()),
                report.pool_version,
            )

    async def collect_all(self) -> None:
        """Poll every source (also catches file events the watcher missed)."""
        self.watchers.ensure()
        if time.monotonic() - self._pruned_at > 86400:
            self._pruned_at = time.monotonic()
            await asyncio.to_thread(self.home.store.prune_events, self.config.events_keep_days)
            await asyncio.to_thread(prune_archive, self.home)
        for kind in list(self.collectors):
            await self.ingest(kind)

    def distill(self, records: list[object]) -> dict[str, Any]:
        collector: Any = self.collectors["distill"]
        result, rejects = collector.ingest_records(records)
        report = store_result(self.home, "distill", result)
        return {
            "accepted": report.stored,
            "duplicates": report.dropped.get("duplicate", 0),
            "rejected": rejects,
        }

    async def _consume(self) -> None:
        while True:
            batch = await self.watchers.batches()
            for kind, paths in batch.items():
                await self.ingest(kind, sorted(paths))
                if kind == "distill":
                    # The inbox collector leaves files younger than 2 s for later: look again soon.
                    asyncio.get_running_loop().call_later(2.5, self._repoll_distill)

    async def monitor(self) -> None:
        """Serving health against the limits, then the canary's next step (deployment/)."""
        chat = self.chat
        if chat is None:
            return
        try:
            await asyncio.to_thread(self._heal_active)
            limits = health_limits(self.config)
            for name, versions in chat.lineages.items():  # each training's canary and rollback
                await asyncio.to_thread(RollbackMonitor(versions, chat.metrics, limits).check)
                running = canary.canary_state(versions)
                if running is not None:
                    decision = await asyncio.to_thread(
                        canary.advance,
                        versions,
                        chat.metrics().get(running.version),
                        canary_policy(self.config),
                    )
                    if decision != "hold":
                        log.info("canary %s (%s): %s", running.version, name, decision)
            if self.config.deployment.export_formats:
                for home in self.home.trainings():
                    await asyncio.to_thread(export_active, home)
        except Exception:  # a monitoring bug must not stop the daemon
            log.exception("deployment monitor failed")

    def _repoll_distill(self) -> None:
        self._tasks.add(task := asyncio.get_running_loop().create_task(self.ingest("distill")))
        task.add_done_callback(self._tasks.discard)

    async def run(self) -> None:
        self.home = Home.open(self.config)
        try:
            with instance_lock(self.home.lock_path):
                await self._serve()
        finally:
            self.home.close()

    def _check_home(self) -> None:
        """Start-up checks: versions.json rewritten, a damaged active adapter rolled back, a
        damaged pool reported (serving and the version commands go on without it)."""
        self.home.versions.write_index()
        self._heal_active()
        try:
            self.home.pool.stats()
        except SamBrainError as err:
            self.home.notices.append(str(err))
        except (RuntimeError, OSError) as err:
            self.home.notices.append(str(pool_damaged(self.home.data / "pool", str(err))))
        for line in self.home.notices:
            log.warning("%s", line)

    def _heal_active(self) -> None:
        # Checksumming costs a read of the adapter: only when its files' sizes or times change.
        active = self.home.versions.current()
        folder = Path(active.adapter_path) if active else None
        seen: tuple[object, ...] = (active.version if active else None,)
        if folder is not None and folder.is_dir():
            seen += tuple(
                (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()
            )
        if seen == self._active_seen:
            return
        # A rollback here is an event; status reads it from there (daemon running or not).
        try:
            self._active_seen = () if heal_active(self.home.versions) else seen
        except SamBrainError as err:  # e.g. the target changed under us: the next tick retries
            log.warning("could not roll back a damaged active adapter: %s", err)

    async def _serve(self) -> None:
        """Set up the parts, serve until SIGTERM/SIGINT, then tear them down (app cleanup_ctx)."""
        # Before anything else: no usable API token, no daemon (the one-line error says why).
        make_policy(self.config.api, self.home.data, self.host, self.port)
        if not is_loopback(self.host):
            log.warning(
                "bound off-loopback (%s): every request needs the token in %s",
                *(self.host, token_path(self.home.data)),
            )
        self._recover_runs()
        self._check_home()
        backend, why = registry.choose_backend(self.config.training.backend)
        self.collectors = make_collectors(self.home)
        loop = asyncio.get_running_loop()
        self.watchers = self._make_watchers(loop)
        ref = base_model_ref(self.home, backend)
        base_dir, unavailable = await resolve_base(ref)
        self.chat, unavailable = make_chat(self.home, base_dir, unavailable)
        exclusive = make_exclusive(self.chat, loop) if self.chat is not None else None
        coordinator = Coordinator(
            self.home,
            backend,
            collect=self.collect_all,
            monitor=self.monitor if self.chat is not None else None,
            exclusive=exclusive,
        )
        ctx = AppContext(
            home=self.home,
            coordinator=coordinator,
            backend=backend,
            backend_why=why,
            distill=self.distill,
            chat=self.chat,
            chat_unavailable=unavailable,
            base_ref=ref,
            base_model_dir=base_dir,
            exclusive=exclusive,
            bind_host=self.host,
        )
        app = make_app(ctx, self.port)
        # Started in this order, torn down in reverse when the runner cleans up.
        app.cleanup_ctx.extend([self._chat_ctx, self._watchers_ctx, self._work_ctx(coordinator)])
        # Chat requests stop on the app's shutdown signal; other handlers get a few seconds.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stop_event.set)
            log.info(
                "SAM Brain listening on http://%s:%d (backend %s: %s; data %s)",
                *(self.host, self.port, backend, why, self.home.data),
            )
            await self.stop_event.wait()
            log.info("stopping")
        finally:
            await runner.cleanup()
            log.info("stopped")

    def _recover_runs(self) -> None:
        # Left training by a crash or kill: the coordinator's first check continues them.
        for home in self.home.trainings():  # each training's own runs
            for run in recover_interrupted(home):
                log.warning("run %s was interrupted: %s", run.run_id, run.reason)
            prune_runs(home, self.config.training.keep_runs)

    def _make_watchers(self, loop: asyncio.AbstractEventLoop) -> Watchers:
        rules = PathRules(self.config.sources.exclude)
        watchers = Watchers(loop, rules.match_file if rules else None)
        for d in self.config.sources.sessions_dirs:
            watchers.add("sessions", Path(d).expanduser(), (".jsonl",))
        self.home.distill_inbox.mkdir(parents=True, exist_ok=True)
        watchers.add("distill", self.home.distill_inbox, (".jsonl",))
        for d in self.config.sources.docs_paths:
            watchers.add("docs", Path(d).expanduser(), (".md",))
        return watchers

    async def _chat_ctx(self, app: web.Application) -> AsyncIterator[None]:
        yield
        if self.chat is not None:
            self.chat.close()

    async def _watchers_ctx(self, app: web.Application) -> AsyncIterator[None]:
        self.watchers.start()
        yield
        self.watchers.stop()

    def _work_ctx(
        self, coordinator: Coordinator
    ) -> Callable[[web.Application], AsyncIterator[None]]:
        """Watcher batches are consumed at once; the first full poll runs, then the scheduler."""

        async def first_poll_then_schedule() -> None:
            try:
                await self.collect_all()
            except Exception:  # the periodic polls retry; the daemon keeps serving
                log.exception("first poll of the sources failed")
            coordinator.start()

        async def ctx(app: web.Application) -> AsyncIterator[None]:
            consumer = asyncio.get_running_loop().create_task(self._consume())
            starter = asyncio.get_running_loop().create_task(first_poll_then_schedule())
            yield
            for task in (starter, consumer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await coordinator.stop()

        return ctx


def setup_logging(level: str) -> None:
    # Under systemd, journald adds timestamps; elsewhere we do.
    fmt = "%(levelname)s %(name)s: %(message)s"
    if not os.environ.get("JOURNAL_STREAM"):
        fmt = "%(asctime)s " + fmt
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr)
    for noisy in ("apscheduler", "aiohttp.access", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sam-brain", description="The SAM Brain daemon.")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", help="config file (default: see README)")
    serve.add_argument("--host", help="bind address (default from config: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default from config: 8765)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ...")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        setup_logging(args.log_level or config.log_level)
        daemon = Daemon(config, args.host or config.api.host, args.port or config.api.port)
        asyncio.run(daemon.run())
    except SamBrainError as err:
        print(f"sam-brain: {err}", file=sys.stderr)
        return err.exit_code
    except OSError as err:
        print(f"sam-brain: {err}", file=sys.stderr)
        return 1
    exit_now()


def exit_now() -> NoReturn:
    """Exit 0 without the interpreter's teardown, once the daemon has closed everything.

    Finalizing MLX, LanceDB and the tokenizers took 2-5 s after "stopped" on a loaded 2-core
    host; skipping it keeps SIGTERM's exit well within 10 s. Logs and stdio are flushed first.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
