"""The engine is loaded on a thread that is gone before serving starts."""

from __future__ import annotations

import threading

import pytest

from llm_deploy.backends.torch.openmp_teams import on_passing_thread


def test_work_runs_on_another_thread_that_ends():
    seen = {}

    def work():
        seen["thread"] = threading.current_thread()
        return 42

    assert on_passing_thread(work) == 42
    assert seen["thread"] is not threading.current_thread()
    assert not seen["thread"].is_alive()


def test_an_error_reaches_the_caller():
    def work():
        raise FileNotFoundError("no config.json")

    with pytest.raises(FileNotFoundError, match="no config.json"):
        on_passing_thread(work)
