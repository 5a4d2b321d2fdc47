"""What a stack's process tree counts as its own: what started after it, not a daemon from before."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.process_tree import ProcessTree


def _started(*argv: str) -> subprocess.Popen:
    return subprocess.Popen(list(argv), start_new_session=True)


@pytest.fixture
def daemon_from_before():
    # Like the docker tests' dockerd: a session-long daemon with a child, started before a stack.
    daemon = _started("bash", "-c", "sleep 60 & wait")
    time.sleep(0.3)
    yield daemon
    daemon.kill()
    daemon.wait()


def test_a_daemon_started_before_the_tree_is_neither_listed_nor_killed(daemon_from_before):
    tree = ProcessTree()
    try:
        stack = _started("bash", "-c", "sleep 61 & wait")
        tree.track(stack.pid)
        time.sleep(0.3)
        assert sorted(p.cmdline for p in tree.ours()) == ["bash -c sleep 61 & wait", "sleep 61"]
        assert len(tree.kill_all()) == 2
        assert stack.wait(timeout=10) == -9
        assert tree.ours() == []
        assert daemon_from_before.poll() is None, "the daemon from before was killed"
    finally:
        tree.close()
