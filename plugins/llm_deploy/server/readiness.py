"""Waiting for a Triton server to be ready, whichever backend and runner started it.

Plain HTTP on the KServe v2 health endpoints, so a launcher needs no Triton client library
(tritonclient.http would pull in gevent for three GETs). Progress goes to the log every 10 s, so
a 7B engine's minutes of loading read as progress, not as a hang.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable, Iterable
from pathlib import Path

from llm_deploy.server import direct_http
from llm_deploy.server.errors import PortInUseError, ServerStartError

log = logging.getLogger(__name__)

LOG_TAIL_LINES = 40
_POLL_S = 0.5
_PROGRESS_EVERY_S = 10.0


def repository_models(repo: str | Path) -> list[str]:
    """The models a repository holds (a directory with a config.pbtxt each)."""
    return sorted(p.parent.name for p in Path(repo).glob("*/config.pbtxt"))


def is_live(http_url: str, timeout_s: float = 5) -> bool:
    """Whether a server answers its liveness endpoint (for error messages after failed requests)."""
    return direct_http.answers_ok(f"{http_url}/v2/health/live", timeout_s)


def wait_ready(http_url: str, models: Iterable[str], *, alive: Callable[[], bool],
               output: Callable[[], list[str]], timeout_s: float, log_path: str = "") -> None:
    """Poll until the server is live and ready and every model reports ready.

    ``alive`` says whether the server's process (or container) still runs, ``output`` gives what
    it has written since it started: a server that exits, or is not ready in ``timeout_s``, raises
    ServerStartError (PortInUseError when it says a port was taken) ending with that output.
    """
    models = list(models)
    started = time.monotonic()
    deadline = started + timeout_s
    next_progress = started + _PROGRESS_EVERY_S
    while True:
        pending = _not_ready(http_url, models)
        if not pending:
            log.info("tritonserver ready after %.1f s: %s", time.monotonic() - started, ", ".join(models) or http_url)
            return
        if not alive():
            lines = output()
            # The port check before launch can lose a race with another program binding the port;
            # the server then exits saying so, and that is not worth a retry either.
            error = PortInUseError if any("Address already in use" in line for line in lines) else ServerStartError
            raise error("tritonserver exited before it was ready" + _tail_message(lines, log_path))
        now = time.monotonic()
        if now >= deadline:
            raise ServerStartError(f"tritonserver not ready after {timeout_s:.0f} s (waiting for: "
                                   f"{', '.join(pending)})" + _tail_message(output(), log_path))
        if now >= next_progress:
            log.info("waiting for tritonserver (%.0f s): not ready yet: %s", now - started, ", ".join(pending))
            next_progress = now + _PROGRESS_EVERY_S
        time.sleep(_POLL_S)


def _not_ready(http_url: str, models: list[str]) -> list[str]:
    """Names of what is not ready yet: 'server' until it answers, then each model still loading."""
    def model_ready(name: str) -> bool:
        return direct_http.answers_ok(f"{http_url}/v2/models/{urllib.parse.quote(name, safe='')}/ready", 10.0)

    if not direct_http.answers_ok(f"{http_url}/v2/health/live", 5.0):
        return ["server"]  # not answering yet (Triton opens its HTTP port once models are loaded)
    if not direct_http.answers_ok(f"{http_url}/v2/health/ready", 5.0):
        # strict readiness: the server is not ready until every model is; say which.
        return ["server"] + [m for m in models if not model_ready(m)]
    return [m for m in models if not model_ready(m)]


def _tail_message(lines: list[str], log_path: str) -> str:
    tail = lines[-LOG_TAIL_LINES:]
    where = f" of {log_path}" if log_path else ""
    if not tail:
        return f"; the server log{where} is empty"
    return f"; last {len(tail)} lines{where}:\n" + "\n".join(tail)
