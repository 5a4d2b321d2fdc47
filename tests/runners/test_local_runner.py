"""The local runner: argv without a shell, output line by line, the whole process group ended."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time

import pytest

from llm_deploy import processes
from llm_deploy.runners import CommandFailed, CommandTimedOut, GpuRequest, LocalRunner, StepCommand, VolumePath

pytestmark = pytest.mark.timeout(120)


def python(name: str, code: str, *args: str, **settings) -> StepCommand:
    return StepCommand(name=name, argv=(sys.executable, "-c", code, *args), **settings)


def pid_alive(pid: int) -> bool:
    processes.reap(pid)  # a service of this test's runner is this process's child
    return processes.is_alive(pid)


def wait_gone(pid: int, timeout_s: float = 15) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not pid_alive(pid)


def test_argv_reaches_the_program_verbatim_never_through_a_shell():
    tricky = ["$(id)", "a b", "; rm -rf /", "'quoted'", "*"]
    result = LocalRunner().run(python("argv", "import json, sys; print(json.dumps(sys.argv[1:]))", *tricky))
    assert json.loads(result.lines[-1]) == tricky and result.exit_code == 0


def test_env_secrets_and_gpu_ids_reach_the_command():
    code = "import os; print(os.environ['STAGE'], os.environ['HF_TOKEN'][:3], os.environ['CUDA_VISIBLE_DEVICES'])"
    command = python("env", code, env={"STAGE": "build"}, secret_env={"HF_TOKEN": "hf_abcdefghijklmnop"},
                     gpus=GpuRequest(device_ids=("2", "3")))
    assert LocalRunner().run(command).lines[-1] == "build hf_ 2,3"
    assert "hf_abcdefghijklmnop" not in command.describe()


def test_output_streams_into_the_log_while_the_command_runs(tmp_path, caplog):
    """The command waits for a file that the test creates only after seeing its first line logged."""
    go = tmp_path / "go"
    seen = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record):
            if "waiting for go" in record.getMessage():
                seen.set()

    caplog.set_level(logging.INFO, logger="llm_deploy.runners.local_runner")
    watcher = Watch()
    logging.getLogger("llm_deploy.runners.local_runner").addHandler(watcher)
    threading.Thread(target=lambda: seen.wait(30) and go.touch(), daemon=True).start()
    code = ("import os, sys, time\nprint('waiting for go', flush=True)\n"
            "while not os.path.exists(sys.argv[1]): time.sleep(0.05)\nprint('went')")
    try:
        result = LocalRunner().run(python("stream", code, str(go), timeout_s=30))
    finally:
        logging.getLogger("llm_deploy.runners.local_runner").removeHandler(watcher)
    assert result.lines == ["waiting for go", "went"]


def test_a_failure_reports_the_exit_code_and_ends_what_the_command_started():
    code = ("import subprocess, sys\nchild = subprocess.Popen(['sleep', '300'])\n"
            "print('child', child.pid, flush=True)\nsys.exit(3)")
    with pytest.raises(CommandFailed) as failed:
        LocalRunner(kill_grace_s=2).run(python("fails", code))
    assert failed.value.exit_code == 3 and "exited with code 3" in str(failed.value)
    child = int(failed.value.lines[-1].split()[1])
    assert wait_gone(child), "the failed command's child was left running"


def test_a_timeout_kills_the_whole_process_group():
    code = ("import subprocess, time\nchild = subprocess.Popen(['sleep', '300'])\n"
            "print('child', child.pid, flush=True)\ntime.sleep(300)")
    started = time.monotonic()
    with pytest.raises(CommandTimedOut, match="timeout") as timed_out:
        LocalRunner(kill_grace_s=2).run(python("slow", code, timeout_s=2))
    assert time.monotonic() - started < 20
    assert wait_gone(int(timed_out.value.lines[-1].split()[1]))


def test_a_background_child_holding_the_output_open_does_not_hang_the_run():
    code = "import subprocess; subprocess.Popen(['sleep', '5']); print('done')"
    started = time.monotonic()
    assert LocalRunner().run(python("detach", code)).lines[-1] == "done"
    assert time.monotonic() - started < 5


def test_volume_paths_are_checked_and_writable_ones_created(tmp_path):
    out = tmp_path / "engines" / "torch"
    LocalRunner().run(python("vol", "pass", volume_paths=(VolumePath(str(tmp_path)), VolumePath(str(out), writable=True))))
    assert out.is_dir()
    with pytest.raises(Exception, match="does not exist"):
        LocalRunner().run(python("vol", "pass", volume_paths=(VolumePath(str(tmp_path / "missing")),)))


def test_a_service_outlives_start_and_stop_ends_it(tmp_path):
    runner = LocalRunner(kill_grace_s=2)
    command = python("service", "import time\nprint('serving', flush=True)\ntime.sleep(300)")
    record = runner.start(command, log_path=tmp_path / "service.log")
    try:
        deadline = time.monotonic() + 15
        while "serving" not in (tmp_path / "service.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runner.alive(record.to_xcom())
    finally:
        assert runner.stop(record.to_xcom()) is True
    assert wait_gone(record.pid) and not runner.alive(record)
    assert runner.stop(record) is False, "stopping twice is harmless"


def test_stop_never_signals_a_process_that_reused_the_pid():
    runner = LocalRunner()
    record = runner.start(python("other", "import time; time.sleep(300)"), log_path=os.devnull)
    try:
        stale = {**record.to_xcom(), "create_time": record.create_time - 60}
        assert runner.stop(stale) is False
        assert pid_alive(record.pid)
    finally:
        runner.stop(record)


def test_logs_are_this_starts_output_only(tmp_path):
    runner = LocalRunner()
    log_path = tmp_path / "service.log"
    log_path.write_text("an earlier run's line\n")
    record = runner.start(python("service", "print('this run', flush=True)"), log_path=log_path)
    deadline = time.monotonic() + 15
    while not runner.logs(record) and time.monotonic() < deadline:
        time.sleep(0.1)
    runner.stop(record)
    assert runner.logs(record) == ["this run"]


def test_a_launcher_that_exits_after_starting_the_server_still_counts_as_running(tmp_path):
    """launch_triton_server.py-style: the started process exits, its child serves on."""
    runner = LocalRunner(kill_grace_s=2)
    code = "import subprocess; print(subprocess.Popen(['sleep', '300']).pid, flush=True)"
    record = runner.start(python("launcher", code), log_path=tmp_path / "launcher.log")
    deadline = time.monotonic() + 15
    while not (tmp_path / "launcher.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    server = int((tmp_path / "launcher.log").read_text().split()[0])
    assert wait_gone(record.pid) and runner.alive(record)
    runner.stop(record)
    assert wait_gone(server) and not runner.alive(record)


def test_a_sequence_of_commands_runs_in_order_and_stops_at_the_first_failure(tmp_path):
    from llm_deploy.runners import sequence_argv

    log = tmp_path / "order"
    step = "import sys; open(sys.argv[1], 'a').write(sys.argv[2])"
    argvs = [[sys.executable, "-c", step, str(log), "1"], [sys.executable, "-c", "import sys; sys.exit(5)"],
             [sys.executable, "-c", step, str(log), "3"]]
    with pytest.raises(CommandFailed) as failed:
        LocalRunner().run(StepCommand(name="seq", argv=sequence_argv(argvs, python=sys.executable)))
    assert failed.value.exit_code == 5 and log.read_text() == "1"
    assert "+ " + " ".join(argvs[1]) in failed.value.lines
