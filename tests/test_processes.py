"""Processes as records name them: identity across pid reuse, zombies, and group stops, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_deploy import processes
from llm_deploy.processes import ProcessIdentity


@pytest.fixture
def spawn():
    """Start real processes in sessions of their own; whatever a test does, none survives it."""
    started: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(argv, start_new_session=True)
        started.append(process)
        return process

    yield start
    for process in started:
        processes.stop_group(process.pid, grace_s=0)
        process.wait(timeout=10)


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_an_identity_names_one_process_and_survives_a_round_trip(spawn):
    sleeper = spawn(["sleep", "60"])
    identity = ProcessIdentity.of(sleeper.pid)

    assert identity.alive() and not identity.reused()
    assert ProcessIdentity.from_dict(identity.to_dict()) == identity


def test_a_pid_with_another_start_time_is_someone_else(spawn):
    sleeper = spawn(["sleep", "60"])
    recorded = ProcessIdentity(sleeper.pid, ProcessIdentity.of(sleeper.pid).create_time - 60)

    assert recorded.reused() and not recorded.alive()


@pytest.mark.parametrize("btime_step_s", [-1.0, 1.0])
def test_a_step_of_the_kernels_boot_time_between_two_reads_is_still_the_same_process(spawn, btime_step_s):
    # psutil's create_time is a start counted from boot plus /proc/stat's btime, which moves by
    # a second as the clock is disciplined: a server read at start and again at stop.
    sleeper = spawn(["sleep", "60"])
    recorded = ProcessIdentity(sleeper.pid, ProcessIdentity.of(sleeper.pid).create_time + btime_step_s)

    assert recorded.alive() and not recorded.reused()


def test_a_zombie_is_not_alive_until_reaped_and_then_gone():
    child = subprocess.Popen(["true"])
    identity = ProcessIdentity.of(child.pid)
    deadline = time.monotonic() + 10
    while processes.is_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)

    assert not processes.is_alive(child.pid)  # exited, not yet reaped: a zombie
    assert not identity.alive() and not identity.reused()
    processes.reap(child.pid)
    assert ProcessIdentity.of(child.pid).create_time is None
    child.returncode = 0  # reaped here, not by Popen


def test_program_name_is_argv0s_basename_even_past_the_kernels_15_characters(tmp_path, spawn):
    long_name = tmp_path / "triton_python_backend_stub"
    long_name.symlink_to("/bin/sleep")
    stub = spawn([str(long_name), "60"])

    assert processes.program_name(stub.pid) == "triton_python_backend_stub"
    assert processes.program_name(2 ** 22 + 1) == ""


def test_group_members_lists_the_live_members_by_name(spawn):
    leader = spawn(python("import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"))
    deadline = time.monotonic() + 10
    while len(processes.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)

    members = processes.group_members(leader.pid)
    assert leader.pid in members and len(members) == 2
    assert [processes.program_name(pid) for pid in processes.group_members(leader.pid, only={"sleep"})] == ["sleep"]


def test_stop_group_terms_the_leader_first_so_it_can_end_its_children_in_order(tmp_path, spawn):
    events = tmp_path / "events"
    child = ("import signal, sys, time\n"
             f"signal.signal(signal.SIGTERM, lambda *a: (open({str(events)!r}, 'a').write('child\\n'), sys.exit(0)))\n"
             "time.sleep(60)\n")
    leader = spawn(python(
        "import signal, subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
        f"signal.signal(signal.SIGTERM, lambda *a: (open({str(events)!r}, 'a').write('leader\\n'), time.sleep(0.5), sys.exit(0)))\n"
        "time.sleep(60)\n"))
    deadline = time.monotonic() + 10
    while len(processes.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the child's handler is installed

    processes.stop_group(leader.pid, leader=ProcessIdentity.of(leader.pid), grace_s=10)

    assert events.read_text().split() == ["leader", "child"]  # the child only once the leader was done
    assert not processes.group_alive(leader.pid)


def test_stop_group_kills_what_ignores_sigterm(spawn):
    stubborn = spawn(python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"))
    time.sleep(0.3)
    started = time.monotonic()

    processes.stop_group(stubborn.pid, leader=ProcessIdentity.of(stubborn.pid), grace_s=0.5)

    assert not processes.group_alive(stubborn.pid)
    assert time.monotonic() - started < 5


def test_init_and_our_own_group_are_never_signalled():
    assert processes.signal_group(0, 0) is False
    assert processes.signal_group(1, 0) is False
    assert processes.group_members(1) == []


def test_nothing_here_reads_proc_by_hand():
    package = Path(processes.__file__).parent
    readers = [path.relative_to(package) for path in package.rglob("*.py") if '"/proc' in path.read_text()
               or "'/proc" in path.read_text()]
    assert readers == []


def test_a_process_that_left_its_group_but_not_the_session_is_still_stopped_with_the_group():
    # What mpirun does with every rank it starts: a process group of its own, in mpirun's session.
    leader = subprocess.Popen(
        [sys.executable, "-c", "import os, subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
         "'import time; time.sleep(60)'], preexec_fn=os.setpgrp); time.sleep(60)"],
        start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(processes.group_members(leader.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        members = processes.group_members(leader.pid)
        assert len(members) == 2 and any(os.getpgid(pid) != leader.pid for pid in members)

        processes.stop_group(leader.pid, grace_s=5)

        assert processes.group_members(leader.pid) == []
    finally:
        leader.kill()
        leader.wait()
