"""A worker "inside the NGC image", made of stand-ins for upstream's scripts.

``make_backend_clone`` lays out a tensorrtllm_backend clone of a release: upstream's recorded
inflight_batcher_llm templates (tests/fixtures/upstream) and, at each script path the release
table names, a stand-in whose argparse is built from that script's recorded flag set
(tests/data/upstream). ``make_toolbox`` makes what the image has on PATH: python3 from a
throwaway venv (so the pip installs our commands make land there, not in the test's venv), a
stand-in ``trtllm-build``, an ``mpirun`` that starts -n copies with OMPI rank variables, an
``nvidia-smi`` that lists the GPUs ``STANDIN_GPUS`` names, and a stand-in
/opt/tritonserver/bin/tritonserver (``standin_tritonserver.py``: the repository API a deployment uses).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from llm_deploy.backends.trtllm.releases import LAUNCH_SERVER, LLM_API, RELEASES, TRTLLM_BUILD
from llm_deploy.spec import DeploySpec

HERE = Path(__file__).resolve().parent
IMPL = HERE / "standin_impl.py"
LLM_API_IMPL = HERE / "standin_llm_api.py"
FLAG_SETS = HERE.parents[1] / "data" / "upstream"
TEMPLATES = HERE.parents[1] / "fixtures" / "upstream"

_STANDIN = """\
#!{python}
import runpy
runpy.run_path({impl!r}, init_globals={{"FLAGS": __import__("json").load(open({flags!r})), "SCRIPT": {key!r},
               "RELEASE": {release!r}, "CALLS": {calls!r}, "IMPL": {impl!r}, "HOST_PYTHON": {host!r}}},
               run_name="__main__")
"""

# trtllm-build comes with the tensorrt_llm wheel (a console script), so the stand-in wheel of
# each release carries one running that release's recorded flags.
_TRTLLM_BUILD_MODULE = """\
import json, runpy


def main():
    runpy.run_path({impl!r}, init_globals={{"FLAGS": json.load(open({flags!r})), "SCRIPT": {key!r},
                   "RELEASE": {release!r}, "CALLS": {calls!r}, "IMPL": {impl!r}}}, run_name="__main__")
"""

_MPIRUN = """\
#!{python}
# mpirun -n N [--allow-run-as-root] cmd...: N copies of cmd, ranks in OMPI's variables.
# SIGTERM is passed on to the ranks, as mpirun does.
import os, signal, subprocess, sys
args = sys.argv[1:]
n = 1
while args and args[0].startswith("-"):
    flag = args.pop(0)
    if flag == "-n":
        n = int(args.pop(0))
procs = [subprocess.Popen(args, env={{**os.environ, "OMPI_COMM_WORLD_RANK": str(r), "OMPI_COMM_WORLD_SIZE": str(n)}})
         for r in range(n)]
signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in procs])
sys.exit(max(p.wait() for p in procs))
"""


# nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader [--id=I,J]: the GPUs of this
# "host", from STANDIN_GPUS ("name, cap" per GPU, ";"-separated; default two H200s), so a test
# moves the engine to a host of another GPU type by changing it.
STANDIN_GPUS_ENV = "STANDIN_GPUS"
_NVIDIA_SMI = """\
#!{python}
import os, sys
gpus = os.environ.get({env!r}, "NVIDIA H200, 9.0;NVIDIA H200, 9.0").split(";")
args = sys.argv[1:]
if "--query-gpu=name,compute_cap" not in args or "--format=csv,noheader" not in args:
    sys.exit("stand-in nvidia-smi answers only --query-gpu=name,compute_cap --format=csv,noheader")
ids = [a.split("=", 1)[1] for a in args if a.startswith("--id=")]
picked = [gpus[int(i)] for i in ids[0].split(",")] if ids else gpus
print("\\n".join(g.strip() for g in picked))
"""


@dataclass(frozen=True)
class Toolbox:
    bin_dir: Path
    venv_bin: Path  # where pip puts the installed wheel's console scripts (trtllm-build)
    wheelhouse: Path
    calls: Path
    tritonserver: Path

    def calls_made(self) -> list[dict]:
        if not self.calls.exists():
            return []
        return [json.loads(line) for line in self.calls.read_text().splitlines()]

    def env(self) -> dict[str, str]:
        """Environment of a worker in the image: its PATH first, pip offline with our wheelhouse."""
        return {"PATH": os.pathsep.join([str(self.bin_dir), str(self.venv_bin), os.environ["PATH"]]), "PIP_NO_INDEX": "1",
                "PIP_FIND_LINKS": str(self.wheelhouse), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                "LLM_DEPLOY_NGC_TRITONSERVER": str(self.tritonserver), "STANDIN_CALLS": str(self.calls)}


def _executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _standin(path: Path, release: str, key: str, calls: Path, python: str) -> Path:
    flags = FLAG_SETS / release / f"{key}.json"
    return _executable(path, _STANDIN.format(python=python, impl=str(IMPL), flags=str(flags), key=key,
                                             release=release, calls=str(calls), host=sys.executable))


def make_toolbox(root: Path, releases: tuple[str, ...] = tuple(RELEASES)) -> Toolbox:
    """A venv for pip to install into, plus PATH stand-ins for every release's tools."""
    venv = root / "image-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = root / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python3", "python"):
        # A wrapper, not a symlink: a symlinked interpreter does not find its venv and would
        # install into the base Python.
        _executable(bin_dir / name, f'#!/bin/sh\nexec "{venv}/bin/python" "$@"\n')
    calls = root / "calls.jsonl"
    python = str(venv / "bin" / "python")
    _executable(bin_dir / "mpirun", _MPIRUN.format(python=python))
    _executable(bin_dir / "nvidia-smi", _NVIDIA_SMI.format(python=python, env=STANDIN_GPUS_ENV))
    wheelhouse = root / "wheelhouse"
    sys.path.insert(0, str(HERE))
    try:
        from standin_impl import write_wheel
    finally:
        sys.path.remove(str(HERE))
    for release in releases:
        if RELEASES[release].wheel.kind == "pip":
            build = _TRTLLM_BUILD_MODULE.format(impl=str(IMPL), flags=str(FLAG_SETS / release / f"{TRTLLM_BUILD}.json"),
                                                key=TRTLLM_BUILD, release=release, calls=str(calls))
            llm_api = ""
            if "llmapi" in RELEASES[release].flows:
                llm_api = LLM_API_IMPL.read_text().replace(
                    "RECORD = None", f"RECORD = {str(FLAG_SETS / release / f'{LLM_API}.json')!r}", 1)
            write_wheel(wheelhouse, RELEASES[release].wheel.version, trtllm_build=build, llm_api=llm_api)
    wheelhouse.mkdir(exist_ok=True)
    tritonserver = _executable(root / "opt/tritonserver/bin/tritonserver",
                               f"#!/bin/sh\nexec {sys.executable} {HERE / 'standin_tritonserver.py'} \"$@\"\n")
    return Toolbox(bin_dir, venv / "bin", wheelhouse, calls, tritonserver)


def fixture_templates(release: str) -> Path:
    """The recorded copy of a release's inflight_batcher_llm templates (tests/fixtures/upstream):
    tensorrtllm_backend's own up to 0.19, TensorRT-LLM's triton_backend/ from 0.20."""
    backend = TEMPLATES / f"tensorrtllm_backend-v{release}" / "inflight_batcher_llm"
    if backend.is_dir():
        return backend
    return TEMPLATES / f"TensorRT-LLM-v{release}" / "triton_backend" / "all_models" / "inflight_batcher_llm"


def make_backend_clone(clone: Path, release: str, toolbox: Toolbox) -> Path:
    """A tensorrtllm_backend clone of ``release`` with stand-in scripts and upstream's templates."""
    row = RELEASES[release]
    python = str(toolbox.bin_dir / "python3")
    shutil.copytree(fixture_templates(release), clone / row.templates)
    if row.llmapi_templates:
        shutil.copytree(fixture_templates(release).with_name("llmapi"), clone / row.llmapi_templates)
    _version_directories(clone / row.templates)
    for key, relative in row.scripts.items():
        path = clone / relative if key == LAUNCH_SERVER else clone / "tensorrt_llm" / relative
        _standin(path, release, key, toolbox.calls, python)
    trtllm = clone / "tensorrt_llm"
    (trtllm / "requirements.txt").write_text("")
    for script in ("install_cmake.sh", "install_pytorch.sh"):
        _executable(trtllm / "docker/common" / script, textwrap.dedent(f"""\
            #!/bin/sh
            echo "{script} $* (stand-in)" >> {toolbox.calls.with_suffix('.sh.log')}
            """))
    return clone


def _version_directories(templates: Path) -> None:
    """Each model's version directory, as upstream's clone has it (the recorded templates keep only
    the config.pbtxt files): a python-backend model's ``1/model.py``, the others' ``1/.gitkeep``.
    Triton loads no model without one."""
    for config in templates.glob("*/config.pbtxt"):
        version = config.parent / "1"
        version.mkdir(exist_ok=True)
        python = 'backend: "python"' in config.read_text()
        (version / ("model.py" if python else ".gitkeep")).write_text("# stand-in\n" if python else "")


CLONE = "src/my-tensorrtllm_backend"


def make_spec(root: Path, checkpoint: Path, toolbox: Toolbox, release: str, **params) -> DeploySpec:
    """The tiny model as a local checkpoint and the user's own backend clone, on one volume."""
    clone = root / CLONE
    if not clone.exists():
        make_backend_clone(clone, release, toolbox)
    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models/tiny-llama").exists():
        (root / "models/tiny-llama").symlink_to(checkpoint, target_is_directory=True)
    values = {"engines_root": str(root), "backend": "trtllm", "trtllm_release": release, "dtype": "float16",
              "model_source": "local", "model_local_dir": "models/tiny-llama", "backend_repo_dir": CLONE,
              "max_batch_size": 4, "max_input_len": 64, "max_output_len": 32, "benchmark_max_tokens": 16}
    return DeploySpec(**{**values, **params})
