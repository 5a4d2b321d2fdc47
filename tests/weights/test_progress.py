"""snapshot_download's tqdm bars as log lines: one line per redraw, seldom, never a carriage return."""

from __future__ import annotations

import logging

import pytest

from llm_deploy.weights import progress
from llm_deploy.weights.progress import LOG_EVERY_S, log_bar_class


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger=progress.log.name)
    return caplog


def test_a_byte_bar_logs_at_most_every_interval_and_every_n_bytes(
    caplog_info: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    monkeypatch.setattr("tqdm.std.time", clock)  # what every bar reads as its _time
    bar = log_bar_class(every_bytes=10_000)(total=100_000, desc="Reconstructing", unit="B", unit_scale=True)
    assert len(caplog_info.messages) == 1 and "0%" in caplog_info.messages[0]  # the start

    for _ in range(40):  # 500 B/s: LOG_EVERY_S passes at 5 kB, so each line waits for 10 kB more
        clock.now += 1
        bar.update(500)
    clock.now += 0.5
    bar.update(30_000)  # many bytes, but too soon after the last line
    bar.close()  # the end is logged whatever the interval

    lines = caplog_info.messages
    assert LOG_EVERY_S == 10 and [line.split(":")[0] for line in lines] == ["Reconstructing"] * 4
    assert [line.split("|")[2].split()[0] for line in lines] == ["0.00/100k", "10.0k/100k", "20.0k/100k", "50.0k/100k"]
    assert ["[00:20<" in lines[1], "[00:40<" in lines[2]] == [True, True]
    assert not any("\r" in line or "\n" in line for line in lines)


def test_a_new_phase_is_logged_at_once_and_an_unchanged_redraw_never(caplog_info: pytest.LogCaptureFixture) -> None:
    # Like snapshot_download's byte bars: a format without a clock, renamed when done, never closed by it.
    bar = log_bar_class(every_bytes=1)(total=6, desc="Reconstructing", bar_format="{l_bar}{n_fmt}/{total_fmt}")
    bar.update(6)  # within LOG_EVERY_S of the first line: not logged
    bar.set_description("Reconstruction complete")
    bar.close()  # what the garbage collector does to it later: the same line again

    assert caplog_info.messages == ["Reconstructing:   0%|0/6", "Reconstruction complete: 100%|6/6"]
