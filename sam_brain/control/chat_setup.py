"""Setting up the daemon's chat server: the resident base, the lineages it serves, the gate's
access to it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from deployment.serving import ChatServer
from sam_brain import registry
from sam_brain.control.feedback import open_chat_log
from sam_brain.errors import SamBrainError
from sam_brain.home import Home
from sam_brain.hub import resolve_model
from sam_brain.train.release import Exclusive
from sam_brain.versions import Versions

log = logging.getLogger("sam_brain")


async def resolve_base(ref: str) -> tuple[str | None, str]:
    """The base model's folder (None when missing) and why chat would be unavailable."""
    try:
        base_dir = str(await asyncio.to_thread(resolve_model, ref))
    except SamBrainError as err:
        log.warning("base model not available yet: %s", err)
        return None, str(err)
    return base_dir, "chat serving is off (deployment.serve_chat = false)"


def make_chat(home: Home, base_dir: str | None, unavailable: str) -> tuple[ChatServer | None, str]:
    """The chat server on `base_dir`, or None and why not."""
    # Serving and the gate use MLX whichever backend trains: every adapter is also written
    # in mlx-lm format. Without mlx-lm, serve the versions with vLLM (PEFT export).
    if not registry.mlx_available():
        return None, (
            "chat serving needs mlx-lm (pip install 'sam-brain[mlx]');"
            " or serve a PEFT export with vLLM"
        )
    dep = home.config.deployment
    if not (dep.serve_chat and base_dir):
        return None, unavailable
    chat = ChatServer(
        home.versions,
        base_dir,
        lineages=served_lineages(home),
        shadow=dep.shadow,
        shadow_queue=dep.shadow_queue,
        prompt_cache_mb=dep.prompt_cache_mb,
        max_prompt_tokens=dep.max_prompt_tokens,
        max_request_mb=dep.max_request_mb,
        request_timeout_s=dep.request_timeout_seconds,
        max_queued=dep.max_queued_requests,
        chat_log=open_chat_log(home),
    )
    return chat, unavailable


def served_lineages(home: Home) -> dict[str, Versions]:
    """Named trainings on the resident base, served beside the default as `sam-NAME`."""
    base = home.config.training.mlx_base_model
    served: dict[str, Versions] = {}
    for named in home.trainings()[1:]:
        if named.config.training.mlx_base_model == base:
            served[named.training] = named.versions
        else:  # a second base would need a second resident model: not served here
            home.notices.append(
                f"training {named.training!r} is not served: its base"
                f" {named.config.training.mlx_base_model} is not the resident {base}"
            )
    return served


def make_exclusive(chat: ChatServer, loop: asyncio.AbstractEventLoop) -> Exclusive[Any]:
    """Let a worker thread run `fn(resident)` on the chat server's resident base model."""

    def run(fn: Callable[[Any], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(chat.run_exclusive(fn), loop).result()

    return run
