"""A local stand-in for what the release watch asks the internet, served over real HTTP on 127.0.0.1.

PyPI's JSON API for the tensorrt_llm wheel, the backend's latest-release feed, and for the probe
NVIDIA/TensorRT-LLM's files at a tag (raw-files shape) and a tag's commit (GitHub API shape).
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.synthetic_upstream import SyntheticRelease


class Feeds:
    def __init__(self) -> None:
        self.wheel, self.backend, self.hits = "0.5.0", "v0.5.0", 0
        self.tags: dict[str, dict[str, str]] = {}  # tag -> repository path -> text
        self.requested: list[str] = []
        feeds = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                feeds.requested.append(self.path)
                if self.path == "/pypi/tensorrt_llm/json":
                    feeds.hits += 1
                    self._send({"info": {"version": feeds.wheel}})
                elif self.path == "/repos/triton-inference-server/tensorrtllm_backend/releases/latest":
                    feeds.hits += 1
                    self._send({"tag_name": feeds.backend})
                elif self.path.startswith("/repos/NVIDIA/TensorRT-LLM/commits/"):
                    tag = self.path.rsplit("/", 1)[1]
                    if tag in feeds.tags:
                        self._send({"sha": feeds.commit_of(tag)})
                    else:
                        self.send_error(422)
                elif self.path.startswith("/raw/"):
                    tag, _, path = self.path.removeprefix("/raw/").partition("/")
                    text = feeds.tags.get(tag, {}).get(path)
                    if text is None:
                        self.send_error(404)
                    else:
                        self._send_bytes(text.encode(), "text/plain")
                else:
                    self.send_error(404)

            def _send(self, body):
                self._send_bytes(json.dumps(body).encode(), "application/json")

            def _send_bytes(self, data: bytes, kind: str):
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{self.server.server_port}"
        self.pypi = base + "/pypi/{package}/json"
        self.releases = base + "/repos/triton-inference-server/tensorrtllm_backend/releases/latest"
        self.raw_files = base + "/raw/{ref}/{path}"
        self.commit_api = base + "/repos/NVIDIA/TensorRT-LLM/commits/{ref}"

    @staticmethod
    def commit_of(tag: str) -> str:
        return hashlib.sha1(tag.encode()).hexdigest()

    def publish(self, tag: str, release: SyntheticRelease) -> None:
        self.tags[tag] = release.files()

    def close(self) -> None:
        self.server.shutdown()
