"""The README's production configuration is a valid run and reproduces the tutorial's commands."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from llm_deploy.backends.trtllm import commands
from llm_deploy.spec import DeploySpec
from tests.backends.trtllm.test_trtllm_commands import TUTORIAL_BUILD, TUTORIAL_PATHS

README = Path(__file__).resolve().parents[1] / "README.md"


def production_conf() -> dict:
    section = README.read_text().split("## Production", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```json\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Production section shows exactly one run configuration"
    return json.loads(blocks[0])


def test_the_production_conf_is_accepted_as_dag_params():
    spec = DeploySpec.from_params(production_conf())
    assert (spec.backend, spec.trtllm_release, spec.runner) == ("trtllm", "0.5.0", "docker")
    assert spec.model_id == "meta-llama/Llama-2-7b-hf"


def test_the_production_conf_builds_the_engine_with_the_tutorials_command():
    spec = DeploySpec.from_params(production_conf())
    (built,) = commands.build_engine(spec, TUTORIAL_PATHS)
    assert built[1:] == shlex.split(TUTORIAL_BUILD.replace("\\\n", " "))[1:]
