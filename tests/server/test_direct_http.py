"""Readiness and /generate reach our own server directly, whatever proxy the environment names."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

import pytest

from llm_deploy.server import direct_http, readiness


@pytest.fixture
def health_server():
    """A stand-in for Triton's health endpoints: live, ready, and model "a" ready; "b" not."""
    ok = {"/v2/health/live", "/v2/health/ready", "/v2/models/a/ready"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200 if self.path in ok else 400)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_proxy_in_the_environment_is_not_used(health_server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    # What plain urllib does behind that proxy. A fresh opener: urlopen() caches the first one it
    # builds, with whatever proxy the environment had then.
    with pytest.raises(urllib.error.URLError):
        urllib.request.build_opener().open(f"{health_server}/v2/health/live", timeout=5)

    assert direct_http.answers_ok(f"{health_server}/v2/health/live", 5)
    assert readiness.is_live(health_server)
    assert readiness._not_ready(health_server, ["a", "b"]) == ["b"]


def test_a_server_that_does_not_answer_is_reported_as_the_server(free_ports):
    assert readiness._not_ready(f"http://127.0.0.1:{free_ports['http_port']}", ["a"]) == ["server"]
