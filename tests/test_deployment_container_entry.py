"""The deployment container's entry, run for real as Docker runs it (``python3 -c <source> <dir>``):
setup commands first, then it becomes the server, started on the version the record says is live."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from llm_deploy.deployment import container_entry, launch, record
from llm_deploy.deployment.launch import ServerLaunch
from llm_deploy.deployment.record import Deployment, Version
from llm_deploy.server.admin_guard import KEY_ENV, guarded_argv

PRINT_ARGV = "import json, os, sys; print(json.dumps([os.getpid(), sys.argv[1:], os.environ.get('SETTING')]))"


def deployment(tmp_path, live: int):
    directory = tmp_path / "demo"
    directory.mkdir()
    record.write(directory, Deployment(
        name="demo", backend="trtllm", host="127.0.0.1", http_port=9000, grpc_port=9001, metrics_port=9002,
        live=live, versions=[Version(n, {"preprocessing": f"preprocessing_v{n}", "tensorrt_llm": f"tensorrt_llm_v{n}"},
                                     "", "", "", "run", 0.0, 4) for n in (1, 2)]))
    return directory


def run_entry(directory, env: dict[str, str] | None = None) -> tuple[int, int, str]:
    """(the entry's pid, its exit code, its output)."""
    process = subprocess.Popen([sys.executable, "-c", container_entry.source(), str(directory)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, **(env or {})})
    output, _ = process.communicate(timeout=60)
    return process.pid, process.returncode, output


def test_it_runs_the_setup_then_becomes_the_server_of_the_live_version(tmp_path):
    directory = deployment(tmp_path, live=2)
    marker = tmp_path / "installed"
    launch.write(directory, ServerLaunch(
        runner="docker", argv=(sys.executable, "-c", PRINT_ARGV), env={"SETTING": "on"},
        setup=((sys.executable, "-c", f"open({str(marker)!r}, 'w').write('wheel')"),),
        image="example/image:1", engines_root=str(tmp_path)), ensemble="ensemble", http_url="http://127.0.0.1:9000")
    entry_pid, code, output = run_entry(directory)
    assert code == 0, output
    assert marker.read_text() == "wheel"
    pid, argv, setting = json.loads(output.splitlines()[-1])
    assert argv == ["--load-model=preprocessing_v2", "--load-model=tensorrt_llm_v2", "--load-model=ensemble"]
    assert setting == "on"
    # Exec'd, not a child: the server is the container's process, so its exit is the container's.
    assert pid == entry_pid


def test_a_failing_setup_command_is_the_containers_exit_code(tmp_path):
    directory = deployment(tmp_path, live=1)
    launch.write(directory, ServerLaunch(
        runner="docker", argv=(sys.executable, "-c", PRINT_ARGV), setup=((sys.executable, "-c", "raise SystemExit(7)"),),
        image="example/image:1", engines_root=str(tmp_path)), ensemble="ensemble", http_url="http://127.0.0.1:9000")
    assert run_entry(directory)[1] == 7


def test_a_guarded_server_gets_the_key_from_the_containers_environment_at_each_start(tmp_path):
    # What Docker re-runs on a restart: server.json names the key only as a variable, and the
    # container's environment (DockerOperator's private_environment) holds it.
    directory = deployment(tmp_path, live=1)
    launch.write(directory, ServerLaunch(
        runner="docker", argv=tuple(guarded_argv([sys.executable, "-c", PRINT_ARGV], "triton-admin-key")),
        image="example/image:1", engines_root=str(tmp_path)), ensemble="ensemble", http_url="http://127.0.0.1:9000")
    key = "containerEntryCanaryKey0042"
    assert key not in (directory / container_entry.SERVER_SPEC).read_text()

    entry_pid, code, output = run_entry(directory, {KEY_ENV: key})

    assert code == 0, output
    pid, argv, _ = json.loads(output.splitlines()[-1])
    assert argv[:3] == ["--load-model=preprocessing_v1", "--load-model=tensorrt_llm_v1", "--load-model=ensemble"]
    assert argv[3].startswith("--http-restricted-api=") and argv[3].endswith(f":triton-admin-key={key}")
    assert argv[4].startswith("--grpc-restricted-protocol=") and argv[4].endswith(f":triton-admin-key={key}")
    assert pid == entry_pid  # the shell exec'd the server in turn: still the container's process
    assert key not in "\n".join(output.splitlines()[:-1])  # the entry's own "+ argv" line names it only


def test_a_guarded_server_without_its_key_does_not_start_unguarded(tmp_path):
    directory = deployment(tmp_path, live=1)
    launch.write(directory, ServerLaunch(
        runner="docker", argv=tuple(guarded_argv([sys.executable, "-c", PRINT_ARGV], "triton-admin-key")),
        image="example/image:1", engines_root=str(tmp_path)), ensemble="ensemble", http_url="http://127.0.0.1:9000")

    _, code, output = run_entry(directory, {KEY_ENV: ""})

    assert code != 0
    assert f"{KEY_ENV}: the Triton admin key is not set" in output
