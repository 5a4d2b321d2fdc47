"""The mpirun command a split engine's server starts with, and how a rank's death reads in its log."""

from __future__ import annotations

import shutil

import pytest

from llm_deploy.errors import NonRetryableError
from llm_deploy.server.mpirun import MpiLaunch, ranks_that_died


def test_rank_0_is_the_server_and_each_follower_gets_its_own_application_context(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/mpirun")
    launch = MpiLaunch(followers=[["python", "-m", "f", "--rank", "1"], ["python", "-m", "f", "--rank", "2"]],
                       env={"LLM_DEPLOY_TP_ADDRESS": "127.0.0.1:1234"})

    argv = launch.argv(["tritonserver", "--model-repository=/r"])

    assert launch.world_size == 3
    head, rest = argv[:argv.index("-n")], argv[argv.index("-n"):]
    assert head[0] == "/usr/bin/mpirun"
    # Not pinned to one core each; the ranks keep this venv's python3 first on PATH.
    assert {"--noprefix", "--oversubscribe", "--tag-output"} <= set(head) and head[head.index("--bind-to") + 1] == "none"
    assert rest == ["-n", "1", "tritonserver", "--model-repository=/r",
                    ":", "-n", "1", "python", "-m", "f", "--rank", "1",
                    ":", "-n", "1", "python", "-m", "f", "--rank", "2"]


def test_a_worker_without_mpirun_is_told_what_to_install(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NonRetryableError, match="world_size=2 .*apt-get install openmpi-bin"):
        MpiLaunch(followers=[["f"]]).argv(["tritonserver"])


def test_mpiruns_own_line_about_a_rank_that_died_is_found_in_the_log():
    log = ("[1,0]<stderr>:I1206 server.cc:345] ...\n"
           "--------------------------------------------------------------------------\n"
           "mpirun noticed that process rank 1 with PID 4242 on node worker-3 exited on signal 9 (Killed).\n"
           "--------------------------------------------------------------------------\n")
    assert ranks_that_died(log) == ["process rank 1 with PID 4242 on node worker-3 exited on signal 9 (Killed)."]
    assert ranks_that_died("all good") == []
