"""The control API app over aiohttp's test server, on the module's own `home` fixture."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from sam_brain.control.api import make_app
from sam_brain.control.app import AppContext
from sam_brain.home import Home
from sam_brain.train.scheduler import Coordinator


@pytest.fixture
async def client(aiohttp_client: Any, home: Home) -> TestClient:
    ctx = AppContext(
        home=home, coordinator=Coordinator(home, "mlx"), backend="mlx", backend_why="test"
    )
    return await aiohttp_client(make_app(ctx))
