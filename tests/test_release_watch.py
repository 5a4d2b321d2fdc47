"""The release watch: real HTTP against local feeds, state on the volume, and the real DAG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_deploy import release_watch as rw


class Feeds:
    """A local stand-in for PyPI's JSON API and the backend's releases feed."""

    def __init__(self) -> None:
        self.wheel, self.backend, self.hits = "0.5.0", "v0.5.0", 0
        feeds = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's naming
                feeds.hits += 1
                if self.path == "/pypi/tensorrt_llm/json":
                    body = {"info": {"version": feeds.wheel}}
                elif self.path == "/repos/triton-inference-server/tensorrtllm_backend/releases/latest":
                    body = {"tag_name": feeds.backend}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
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


@pytest.fixture
def feeds():
    f = Feeds()
    yield f
    f.server.shutdown()


def test_feeds_are_read_over_http(feeds):
    assert rw.latest_wheel(url=feeds.pypi) == "0.5.0"
    assert rw.latest_backend(feeds.releases) == "0.5.0"


@pytest.mark.parametrize("tag", ["latest", "0.5", "v1.2.3; rm -rf /", ""])
def test_a_tag_that_is_not_a_release_is_refused(tag):
    if tag == "0.5":
        assert rw.normalise(tag) == "0.5"
        return
    with pytest.raises(rw.ReleaseFeedError):
        rw.normalise(tag)


def test_new_supported_release_is_deployed_once(tmp_path):
    latest = rw.Latest("0.5.0", "0.5.0")
    first = rw.decide(latest, rw.load_state(tmp_path), ("0.5.0",))
    assert first.release == "0.5.0"
    rw.record_deployed(tmp_path, "0.5.0")
    again = rw.decide(latest, rw.load_state(tmp_path), ("0.5.0",))
    assert again.release is None and "already deployed" in again.reason


def test_the_package_index_names_the_release_even_when_the_backend_feed_lags():
    """From 0.20 the backend repository no longer tags every TensorRT-LLM release."""
    decision = rw.decide(rw.Latest("1.2.1", "1.0.0"), {}, ("1.0.0", "1.2.1"))
    assert decision.release == "1.2.1" and "1.0.0" in decision.reason


def test_every_release_in_the_table_is_one_the_watch_triggers():
    from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES

    for release in ("0.20.0", "0.21.0", "1.0.0", "1.1.0", "1.2.0", "1.2.1"):
        assert rw.decide(rw.Latest(release, "1.0.0"), {}, SUPPORTED_TRTLLM_RELEASES).release == release


def test_unsupported_release_is_reported_not_triggered(tmp_path):
    decision = rw.decide(rw.Latest("9.9.9", "9.9.9"), {}, ("0.5.0",))
    assert decision.release is None and decision.unsupported
    assert "add its row" in decision.reason
    rw.record_check(tmp_path, decision)
    assert rw.load_state(tmp_path)["unsupported_seen"] == "9.9.9"
    assert not rw.decide(rw.Latest("9.9.9", "9.9.9"), rw.load_state(tmp_path), ("0.5.0",)).unsupported


def _airflow(args, airflow_home):
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True)


def _deploy_runs(airflow_home) -> list[dict]:
    code = (
        "import json; from airflow.models.dagrun import DagRun; from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    print(json.dumps([r.conf for r in s.query(DagRun).filter(DagRun.dag_id == 'deploy_llm')]))\n"
    )
    env = {**os.environ, "AIRFLOW_HOME": str(airflow_home)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_the_dag_triggers_deploy_once_per_new_release(feeds, tmp_path):
    home = tmp_path / "airflow"
    assert _airflow(["db", "migrate"], home).returncode == 0
    assert _airflow(["dags", "reserialize"], home).returncode == 0
    conf = json.dumps({"pypi_json_url": feeds.pypi, "backend_releases_url": feeds.releases,
                       "engines_root": str(tmp_path / "engines")})

    first = _airflow(["dags", "test", "watch_trtllm_releases", "--conf", conf], home)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    runs = _deploy_runs(home)
    assert runs == [{"backend": "trtllm", "trtllm_release": "0.5.0"}]

    second = _airflow(["dags", "test", "watch_trtllm_releases", "--conf", conf], home)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert len(_deploy_runs(home)) == 1, "a tick with nothing new triggers nothing"
    assert feeds.hits == 4  # both feeds asked on each tick
