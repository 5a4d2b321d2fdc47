"""HTTP to our own Triton servers, never through a proxy taken from the environment.

Workers behind a corporate proxy have ``http_proxy`` set, and urllib would send the requests for
127.0.0.1:8000 (or the GPU host's server) to that proxy, which cannot reach them: readiness would
time out with the server up and well. aiohttp (the benchmark client) ignores the environment
unless asked to, and so does this.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def urlopen(request: str | urllib.request.Request, timeout: float) -> Any:
    """``urllib.request.urlopen`` with no proxy; raises what it raises."""
    return _DIRECT.open(request, timeout=timeout)


def answers_ok(url: str, timeout_s: float) -> bool:
    """GET ``url``: True on 200, False on any other status or no answer (KServe v2 health/ready)."""
    try:
        with urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    # HTTPError (400 = not ready) is a URLError; a server still coming up can also reset or garble.
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return False
