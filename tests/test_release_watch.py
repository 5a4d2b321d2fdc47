"""The release watch: real HTTP against local feeds, state on the volume, and the real DAG."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_deploy import release_watch as rw
from tests.support.release_feeds import Feeds
from tests.support.synthetic_upstream import SyntheticRelease

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def feeds():
    f = Feeds()
    yield f
    f.close()


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


def test_a_rebuild_the_watch_triggers_ends_in_promotion_on_every_release():
    """The watch's default conf makes a spec that promotes, and no release refuses it: the run
    qualifies the new release's engine and, if it wins, serves it from the deployment."""
    from llm_deploy.backends.registry import backend_for
    from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES, DeploySpec

    for release in SUPPORTED_TRTLLM_RELEASES:
        spec = DeploySpec(backend="trtllm", promote=True, trtllm_release=release)
        assert spec.promote and backend_for(spec).deployment_refusal(spec) is None, release


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


def _env(airflow_home) -> dict:
    # This checkout's package first: the venv's editable install may point at another one.
    return {**os.environ, "AIRFLOW_HOME": str(airflow_home),
            "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_a_new_release_without_a_row_is_probed_and_its_verdict_recorded_once(tmp_path):
    decision = rw.decide(rw.Latest("1.3.0", "1.0.0"), {}, ("1.2.1",), probe=True)
    assert decision.release is None and decision.probe and "probing upstream's files at v1.3.0" in decision.reason
    rw.record_check(tmp_path, decision)
    assert "unsupported_seen" not in rw.load_state(tmp_path), "a probe that failed to run is retried next tick"
    rw.record_incompatible(tmp_path, "1.3.0", ["trtllm-build: --max_seq_len: not a flag of trtllm-build"])
    again = rw.decide(rw.Latest("1.3.0", "1.0.0"), rw.load_state(tmp_path), ("1.2.1",), probe=True)
    assert again.release is None and not again.probe
    assert rw.decide(rw.Latest("1.3.0", "1.0.0"), {}, ("1.2.1", "1.3.0"), probe=True).release == "1.3.0"


def _airflow(args, airflow_home):
    env = _env(airflow_home)
    return subprocess.run([sys.executable, "-m", "airflow", *args], env=env, capture_output=True, text=True)


def _deploy_runs(airflow_home) -> list[dict]:
    code = (
        "import json; from airflow.models.dagrun import DagRun; from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    print(json.dumps([r.conf for r in s.query(DagRun).filter(DagRun.dag_id == 'deploy_llm')]))\n"
    )
    env = _env(airflow_home)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.e2e
def test_the_dag_triggers_deploy_once_per_new_release(feeds, tmp_path):
    """Table release, nothing new, then two releases without a row: one our commands still fit
    (derived and triggered), one that removed a flag we pass (reported, nothing triggered)."""
    home, engines = tmp_path / "airflow", tmp_path / "engines"
    assert _airflow(["db", "migrate"], home).returncode == 0
    assert _airflow(["dags", "reserialize"], home).returncode == 0
    conf = json.dumps({"pypi_json_url": feeds.pypi, "backend_releases_url": feeds.releases,
                       "trtllm_raw_files_url": feeds.raw_files, "trtllm_commit_url": feeds.commit_api,
                       "engines_root": str(engines)})

    def tick():
        run = _airflow(["dags", "test", "watch_trtllm_releases", "--conf", conf], home)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        return run

    tick()
    runs = _deploy_runs(home)
    assert runs == [{"backend": "trtllm", "promote": True, "trtllm_release": "0.5.0"}]

    tick()
    assert len(_deploy_runs(home)) == 1, "a tick with nothing new triggers nothing"
    assert feeds.hits == 4  # both feeds asked on each tick

    feeds.publish("v1.2.1", SyntheticRelease.from_recorded("1.2.1"))
    feeds.publish("v1.3.0", SyntheticRelease.from_recorded("1.2.1"))
    incompatible = SyntheticRelease.from_recorded("1.2.1")
    incompatible.remove_flag("launch_triton_server.py", "--world_size")
    feeds.publish("v1.3.1", incompatible)

    feeds.wheel = "1.3.0"
    tick()
    assert _deploy_runs(home)[1:] == [{"backend": "trtllm", "promote": True, "trtllm_release": "1.3.0",
                                       "engines_root": str(engines)}]
    assert json.loads((engines / "releases" / "1.3.0" / "release.json").read_text())["derived_from"] == "1.2.1"

    feeds.wheel = "1.3.1"
    tick()
    assert len(_deploy_runs(home)) == 2, "an incompatible release triggers nothing"
    state = rw.load_state(engines)
    assert state["unsupported_seen"] == "1.3.1" and state["deployed"] == "1.3.0"
    assert any("--world_size: not a flag of launch_triton_server.py" in f for f in state["incompatible"]["findings"])
    assert "--world_size" in (engines / "release_probes" / "1.3.1" / "report.md").read_text()
    assert not (engines / "releases" / "1.3.1").exists()
