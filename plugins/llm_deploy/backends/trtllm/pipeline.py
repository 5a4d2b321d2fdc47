"""The trtllm backend's steps: upstream's commands (``commands``) executed through a runner.

What the tutorial does by hand in one container, step by step, with every output published on
the engines volume the way the torch backend's are (scratch directory, manifest, atomic rename):

  build_wheel        clone tensorrtllm_backend at the release's pinned commit (once per release,
                     into src/ on the volume), then build the wheel into wheels/ (0.5.0) or
                     pip-install the release's published wheel (current releases)
  build_engine       build.py, or convert_checkpoint.py + trtllm-build, into a scratch directory
  verify_engine      run.py on the tutorial's prompt under mpirun; it must print an output text
  render_model_repo  copy all_models/inflight_batcher_llm from the clone and fill every placeholder
  start_server       launch_triton_server.py under a small supervisor, then wait for readiness

Only upstream's commands go through the runner (``local``: a worker inside the NGC image;
``docker``: a container of the release's image per command). The Python steps around them
(download, render, benchmark) run in the worker, so the NGC image needs nothing of ours.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llm_deploy import volume
from llm_deploy.backends.trtllm import commands, validation
from llm_deploy.backends.trtllm.layout import TrtllmPaths, default_backend_dir
from llm_deploy.backends.trtllm.upstream_repo import render_upstream_repository, template_dir
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.runners.command import (
    NO_GPU,
    GpuRequest,
    ServiceRecord,
    StepCommand,
    VolumePath,
    sequence_argv,
)
from llm_deploy.server import direct_http
from llm_deploy.spec import TUTORIAL_PROMPT, DeploySpec

log = logging.getLogger(__name__)

# Cloning with LFS and building the C++ runtime take long; these only stop a hung command.
CLONE_TIMEOUT_S = 3600
WHEEL_TIMEOUT_S = 4 * 3600
ENGINE_TIMEOUT_S = 4 * 3600
VERIFY_TIMEOUT_S = 1800
_READY_POLL_S = 1.0

# run.py prints `Output: "..."` (0.5.0) or `Output [Text 0 Beam 0]: "..."` (current releases).
_RUN_PY_OUTPUT = re.compile(r'^Output(?: \[[^\]]*\])?: "(.*)"\s*$')

# launch_triton_server.py starts `mpirun ... tritonserver &` and exits at once. The supervisor
# runs the commands it is given in order (the last one being the launcher), then lives as long
# as anything they started does, so a runner watches one process and a container does not stop
# the moment the launcher returns. SIGTERM (docker stop, or the local runner's) ends its group.
_SUPERVISE = (
    "import json, os, signal, subprocess, sys, time\n"
    "def others():\n"
    "    me, group = os.getpid(), os.getpgid(0)\n"
    "    found = []\n"
    "    for entry in os.listdir('/proc'):\n"
    "        if entry.isdigit() and int(entry) != me:\n"
    "            try:\n"
    "                fields = open(f'/proc/{entry}/stat').read().rsplit(')', 1)[1].split()\n"
    "            except OSError:\n"
    "                continue\n"
    "            if int(fields[2]) == group and fields[0] != 'Z':\n"
    "                found.append(int(entry))\n"
    "    return found\n"
    "def stop(signum, frame):\n"
    "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "    os.killpg(0, signal.SIGTERM)\n"
    "    deadline = time.monotonic() + 20\n"
    "    while others() and time.monotonic() < deadline:\n"
    "        time.sleep(0.2)\n"
    "    if others():\n"
    "        os.killpg(0, signal.SIGKILL)\n"
    "    sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "for argv in json.loads(sys.argv[1]):\n"
    "    print('+ ' + ' '.join(argv), flush=True)\n"
    "    code = subprocess.call(argv)\n"
    "    if code:\n"
    "        sys.exit(code)\n"
    "while others():\n"
    "    time.sleep(1)\n"
    "print('llm_deploy: every process the launcher started has exited', flush=True)\n"
    "sys.exit(1)\n"
)


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackendRecord:
    backend_dir: str
    wheel_dir: str  # "" when the release's wheel comes from pip
    release: str
    reused: bool

    def to_xcom(self) -> dict:
        return asdict(self)


# --- where things are -----------------------------------------------------------------------------


def backend_dir(spec: DeploySpec) -> Path:
    return Path(default_backend_dir(spec))


def wheel_dir(spec: DeploySpec) -> Path:
    """build_wheel.py --dist_dir: on the volume, so every later container can install it."""
    return spec.root / "wheels" / f"tensorrt_llm-{spec.trtllm_release}"


def paths_for(spec: DeploySpec, **dirs: str) -> TrtllmPaths:
    values = {"backend_dir": str(backend_dir(spec)), "hf_checkpoint_dir": "", "engine_dir": "",
              "model_repo_dir": "", "wheel_dir": str(wheel_dir(spec))}
    return TrtllmPaths(**{**values, **dirs})


def gpus(spec: DeploySpec) -> GpuRequest:
    return GpuRequest.for_world_size(spec.world_size, spec.gpu_device_ids)


# --- build_wheel ----------------------------------------------------------------------------------


def build_wheel(spec: DeploySpec, runner: Any) -> BackendRecord:
    """Clone the backend (unless a clone is published already) and make tensorrt_llm installable."""
    release = _preflight(spec, runner, "build_wheel")
    clone = backend_dir(spec)
    reused = _ensure_clone(spec, runner, clone)
    validation.require_backend_clone(clone, release)
    if release.wheel.kind == "pip":
        _run(runner, spec, "build_wheel", commands.install_wheel(spec, paths_for(spec)),
             writes=[], timeout_s=WHEEL_TIMEOUT_S, gpu=False)
        return BackendRecord(str(clone), "", release.name, reused)
    final = wheel_dir(spec)
    if volume.is_published(final) and any(final.glob("tensorrt_llm-*.whl")):
        log.info("tensorrt_llm %s wheel already built: %s", release.name, final)
        return BackendRecord(str(clone), str(final), release.name, reused)
    with volume.publish_dir(final, manifest_extra={"release": release.name}) as scratch:
        argvs = commands.install_wheel(spec, paths_for(spec, wheel_dir=str(scratch)))
        # build_wheel.py builds the C++ runtime under the clone's cpp/build: the clone is written too.
        _run(runner, spec, "build_wheel", argvs, writes=[clone, final.parent], timeout_s=WHEEL_TIMEOUT_S,
             gpu=False)
        if not any(scratch.glob("tensorrt_llm-*.whl")):
            raise StepError(f"build_wheel.py finished but wrote no tensorrt_llm wheel into {scratch}")
    return BackendRecord(str(clone), str(final), release.name, reused)


def _ensure_clone(spec: DeploySpec, runner: Any, clone: Path) -> bool:
    if spec.backend_repo_dir:
        # The user's own clone: used as it is, never replaced (and never fetched over).
        validation.require_backend_clone(clone, validation.release_row(spec.trtllm_release))
        return True
    if volume.is_published(clone):
        log.info("tensorrtllm_backend %s already cloned: %s", spec.trtllm_release, clone)
        return True
    with volume.publish_dir(clone, manifest_extra={"release": spec.trtllm_release}) as scratch:
        # git clone wants to create its target itself.
        scratch.rmdir()
        _run(runner, spec, "clone_backend", commands.clone_backend(spec, paths_for(spec, backend_dir=str(scratch))),
             writes=[clone.parent], timeout_s=CLONE_TIMEOUT_S, gpu=False)
    return False


def wheel_prefix(spec: DeploySpec) -> list[list[str]]:
    """Commands that make the built wheel importable in a fresh container (0.5.0 only)."""
    release = validation.release_row(spec.trtllm_release)
    if release.wheel.kind == "pip":
        return []  # the release's NGC image (or the worker, after build_wheel) carries it
    wheels = wheel_dir(spec)
    if not volume.is_published(wheels):
        raise NonRetryableError(
            f"no tensorrt_llm {release.name} wheel at {wheels}: build_wheel has not run for "
            f"trtllm_release={release.name!r} on this engines volume; run the whole DAG"
        )
    return commands.install_built_wheel(spec, paths_for(spec))


# --- build_engine ---------------------------------------------------------------------------------


def build_engine(spec: DeploySpec, checkpoint: dict, final: Path, engine_config: dict, runner: Any) -> None:
    """Build the engine for ``spec`` from ``checkpoint`` and publish it as ``final``."""
    _preflight(spec, runner, "build_engine")
    validation.require_backend_clone(backend_dir(spec), validation.release_row(spec.trtllm_release))
    prefix = wheel_prefix(spec)
    converted = final.parent / f".tmp-converted-{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        with volume.publish_dir(final, manifest_extra={"engine_config": engine_config}) as scratch:
            paths = paths_for(spec, hf_checkpoint_dir=checkpoint["checkpoint_dir"], engine_dir=f"{scratch}/",
                              converted_checkpoint_dir=str(converted))
            _run(runner, spec, "build_engine", prefix + commands.build_engine(spec, paths),
                 writes=[final.parent], timeout_s=ENGINE_TIMEOUT_S, gpu=True)
            engines = sorted(scratch.glob("*.engine"))
            if len(engines) != spec.world_size:
                raise StepError(f"the build wrote {len(engines)} *.engine files into {scratch}, "
                                f"expected one per rank ({spec.world_size})")
            validation.check_engine_world_size(spec, scratch)
    finally:
        if converted.exists():
            shutil.rmtree(converted, ignore_errors=True)


# --- verify_engine --------------------------------------------------------------------------------


def verify_engine(spec: DeploySpec, engine: dict, checkpoint: dict, runner: Any) -> tuple[str, float]:
    """run.py on the tutorial's prompt; returns (its output text, seconds)."""
    _preflight(spec, runner, "verify_engine")
    validation.check_engine_world_size(spec, engine["engine_dir"])
    paths = paths_for(spec, hf_checkpoint_dir=checkpoint["checkpoint_dir"], engine_dir=engine["engine_dir"])
    started = time.perf_counter()
    lines = _run(runner, spec, "verify_engine", wheel_prefix(spec) + commands.verify_engine(spec, paths),
                 writes=[], timeout_s=VERIFY_TIMEOUT_S, gpu=True)
    seconds = time.perf_counter() - started
    outputs = [m.group(1) for line in lines if (m := _RUN_PY_OUTPUT.match(line.strip()))]
    if not outputs or not outputs[0].strip():
        raise NonRetryableError(
            f"run.py printed no output text for {TUTORIAL_PROMPT!r} (an engine that generates nothing); "
            f"last lines: {lines[-10:]}"
        )
    return outputs[0], seconds


# --- render_model_repo ----------------------------------------------------------------------------


def render_model_repo(spec: DeploySpec, engine: dict, checkpoint: dict, out_dir: Path) -> list[Path]:
    """Upstream's inflight_batcher_llm from the clone, filled from the spec, into ``out_dir``."""
    release = validation.validate_spec(spec)
    clone = backend_dir(spec)
    validation.require_backend_clone(clone, release, need_trtllm=False)
    return render_upstream_repository(spec, source=template_dir(clone), out_dir=out_dir,
                                      engine_dir=engine["engine_dir"], tokenizer_dir=checkpoint["checkpoint_dir"])


# --- start_server ---------------------------------------------------------------------------------


def launch_command(spec: DeploySpec, model_repo: str) -> StepCommand:
    argvs = wheel_prefix(spec) + commands.launch_server(spec, paths_for(spec, model_repo_dir=model_repo))
    return StepCommand(
        name="start_server",
        argv=(commands.PYTHON, "-c", _SUPERVISE, json.dumps(argvs)),
        env={"PYTHONUNBUFFERED": "1"},
        volume_paths=(VolumePath(str(spec.root), writable=False),),
        gpus=gpus(spec),
        network_host=True,
    )


def start_server(spec: DeploySpec, model_repo: str, log_path: Path, runner: Any) -> tuple[ServiceRecord, str]:
    """Launch Triton with upstream's script; return (the service record, its HTTP URL) once ready.

    On any failure what was started is stopped again: no orphan server outlives a failed start.
    """
    from llm_deploy.server import tritonserver

    _preflight(spec, runner, "start_server")
    settings = (volume.read_manifest(Path(model_repo)) or {}).get("settings", {})
    if "engine_dir" in settings:
        validation.check_engine_world_size(spec, settings["engine_dir"])
    ports = {"http": spec.http_port, "grpc": spec.grpc_port, "metrics": spec.metrics_port}
    tritonserver.check_ports_free(spec.server_host, ports)
    http_url = f"http://{tritonserver.client_host(spec.server_host)}:{spec.http_port}"
    record = runner.start(launch_command(spec, model_repo), log_path)
    try:
        _wait_ready(runner, record, http_url, spec.server_start_timeout_s)
    except BaseException:
        runner.stop(record)
        raise
    return record, http_url


def _wait_ready(runner: Any, record: ServiceRecord, http_url: str, timeout_s: float) -> None:
    """Triton's /v2/health/ready: the server and every model in the repository loaded."""
    deadline = time.monotonic() + timeout_s
    next_progress = time.monotonic() + 10
    while True:
        if _ready(http_url):
            return
        if not runner.alive(record):
            tail = "\n".join(runner.logs(record)[-30:]) if hasattr(runner, "logs") else ""
            raise StepError(f"the server exited before it was ready; last output:\n{tail or _file_tail(record.log_path)}")
        if time.monotonic() >= deadline:
            raise StepError(f"the server was not ready within {timeout_s:.0f}s; its log: {record.log_path}")
        if time.monotonic() >= next_progress:
            log.info("waiting for %s/v2/health/ready (%.0fs left)", http_url, deadline - time.monotonic())
            next_progress += 10
        time.sleep(_READY_POLL_S)


def _ready(http_url: str) -> bool:
    return direct_http.answers_ok(f"{http_url}/v2/health/ready", 2)


def _file_tail(path: str, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- running commands -----------------------------------------------------------------------------


def _preflight(spec: DeploySpec, runner: Any, step: str):
    """Bad input and a worker that cannot run the step are refused before anything runs."""
    release = validation.validate_spec(spec)
    if runner.name == "local":
        from llm_deploy.backends.trtllm import require_worker

        require_worker(step)
    return release


def _run(runner: Any, spec: DeploySpec, name: str, argvs: list[list[str]], *, writes: list[Path],
         timeout_s: float, gpu: bool) -> list[str]:
    """Run ``argvs`` in order as one command (one container) and return its output lines."""
    command = StepCommand(
        name=name,
        argv=sequence_argv(argvs, python=commands.PYTHON),
        env={"PYTHONUNBUFFERED": "1"},
        volume_paths=(VolumePath(str(spec.root), writable=False),
                      *(VolumePath(str(path), writable=True) for path in writes)),
        gpus=gpus(spec) if gpu else NO_GPU,
        timeout_s=timeout_s,
    )
    log.info("running %s", command.describe())
    result = runner.run(command)  # CommandFailed (retryable) carries the command's last lines
    log.info("%s finished in %.1fs", name, result.seconds)
    return result.lines
