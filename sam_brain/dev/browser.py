"""A headless Chromium driven over the DevTools protocol, for the dashboard's tests and bench.

No browser-automation package: Debian's `chromium` is started with a DevTools port, and aiohttp's
websocket client sends the few commands needed (open a page, size the viewport, run a script,
take a screenshot). `find_chromium()` returns None when no browser is installed, so callers skip.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from sam_brain.errors import SamBrainError

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class BrowserError(SamBrainError):
    """The browser could not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """The path of an installed Chromium (or Chrome), else None."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def browser_env() -> dict[str, str]:
    """This environment without LD_PRELOAD: the OpenBLAS the tests preload for MLX starts
    threads in Chromium's zygote, and the renderers it forks then hang (no page ever answers)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}


class Browser:
    """One headless browser with one page (tab); use as `async with Browser() as b:`."""

    def __init__(self, executable: str | None = None, width: int = 1280, height: int = 900) -> None:
        found = executable or find_chromium()
        if found is None:
            raise BrowserError("no Chromium found (apt-get install chromium)")
        self.executable = found
        self.size = (width, height)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: list[dict[str, Any]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = tempfile.TemporaryDirectory(prefix="sam-chromium-", ignore_cleanup_errors=True)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Browser:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        profile = Path(self._tmp.name)
        self._proc = subprocess.Popen(
            [
                self.executable,
                "--headless=new",
                "--no-sandbox",  # tests may run as root in a container
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={self.size[0]},{self.size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own group: stopping it stops its helper processes too
            env=browser_env(),
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError("Chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = port_file.read_text().splitlines()[0]
        self._http = aiohttp.ClientSession()
        # A fresh tab of our own (the start-up tab may still be replaced while the browser
        # settles, and commands sent to it then go unanswered); talk to it over its socket.
        async with self._http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            page = await resp.json()
        self._ws = await self._http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send("Log.enable")  # CSP violations arrive as log entries
        await self.viewport(*self.size)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                try:
                    os.killpg(self._proc.pid, sig)  # the group this object started, by its id
                except ProcessLookupError:
                    break
                try:
                    self._proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._tmp.cleanup()

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            fut = self._pending.pop(doc.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(doc)
            elif "method" in doc:
                self._events.append(doc)

    async def send(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """One DevTools command on the page; its result, or a BrowserError."""
        assert self._ws is not None
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        await self._ws.send_str(json.dumps(msg))
        doc = await asyncio.wait_for(fut, 60)
        if "error" in doc:
            raise BrowserError(f"{method}: {doc['error'].get('message')}")
        return dict(doc.get("result", {}))

    async def viewport(self, width: int, height: int) -> None:
        """Lay the page out at this CSS size (a phone width gets a mobile viewport)."""
        mobile = width < 600
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    async def goto(self, url: str, timeout: float = 30.0) -> None:
        """Open `url` and wait for its load event."""
        self._events.clear()
        await self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not any(e["method"] == "Page.loadEventFired" for e in self._events):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not finish loading in {timeout:.0f} s")
            await asyncio.sleep(0.02)

    async def eval(self, expression: str) -> Any:
        """The JSON value of a script run in the page (promises are awaited)."""
        doc = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in doc:
            raise BrowserError(f"script failed: {doc['exceptionDetails'].get('text')}")
        return doc["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll `expression` until it is truthy; its value, or a BrowserError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.eval(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the viewport)."""
        doc = await self.send(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path.write_bytes(base64.b64decode(doc["data"]))
        return path

    def console_errors(self) -> list[str]:
        """Exceptions and console errors the page reported (CSP violations among them)."""
        out = []
        for e in self._events:
            if e["method"] == "Runtime.exceptionThrown":
                out.append(str(e["params"]["exceptionDetails"].get("text")))
            elif e["method"] == "Log.entryAdded" and e["params"]["entry"].get("level") == "error":
                out.append(str(e["params"]["entry"].get("text")))
            elif e["method"] == "Runtime.consoleAPICalled" and e["params"].get("type") == "error":
                out.append(" ".join(str(a.get("value", "")) for a in e["params"].get("args", [])))
        return out
