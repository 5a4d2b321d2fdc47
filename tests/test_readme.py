"""The README's production configuration is a valid run and reproduces the tutorial's commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from llm_deploy.backends.trtllm import commands
from llm_deploy.backends.trtllm.backend import TrtllmBackend
from llm_deploy.backends.trtllm.releases import RELEASES
from llm_deploy.backends.trtllm.validation import validate_spec
from llm_deploy.spec import SUPPORTED_TRTLLM_RELEASES, DeploySpec
from tests.backends.trtllm.test_trtllm_commands import TUTORIAL_BUILD, TUTORIAL_PATHS

README = Path(__file__).resolve().parents[1] / "README.md"


def production_confs() -> list[dict]:
    section = README.read_text().split("## Production", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2, "the Production section shows the tutorial's run and the current release's"
    return [json.loads(block) for block in blocks]


def production_conf() -> dict:
    return production_confs()[0]


def test_the_tutorials_conf_is_accepted_as_dag_params_with_its_own_settings():
    spec = DeploySpec.from_params(production_conf())
    assert (spec.backend, spec.trtllm_release, spec.runner) == ("trtllm", "0.5.0", "docker")
    assert spec.model_id == "meta-llama/Llama-2-7b-hf"
    assert spec.decoupled_mode is False  # the tutorial's sed of ${decoupled_mode}


def test_the_current_release_conf_runs_its_default_flow_in_its_image():
    spec = DeploySpec.from_params(production_confs()[1])
    row = RELEASES[spec.trtllm_release]
    assert spec.trtllm_release == SUPPORTED_TRTLLM_RELEASES[-1] == "1.2.1"
    assert spec.triton_flow == row.default_flow
    assert validate_spec(spec) is row
    assert TrtllmBackend().default_image(spec) == "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
    # Apart from the release and its streaming, the same deployment as the tutorial's.
    tutorial = production_conf()
    differs = {key for key in set(tutorial) | set(production_confs()[1]) if tutorial.get(key) != production_confs()[1].get(key)}
    assert differs == {"trtllm_release", "triton_flow", "decoupled_mode", "benchmark_targets"}


def test_the_production_conf_builds_the_engine_with_the_tutorials_command():
    spec = DeploySpec.from_params(production_conf())
    (built,) = commands.build_engine(spec, TUTORIAL_PATHS)
    assert built[1:] == shlex.split(TUTORIAL_BUILD.replace("\\\n", " "))[1:]
