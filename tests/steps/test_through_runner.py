"""Python steps through ``python -m llm_deploy.cli``: same record, same exceptions as in-process."""

from __future__ import annotations

import json

import pytest
from llm_deploy import volume
from llm_deploy.cli import OUTCOME_MARKER, main, parse_outcome
from llm_deploy.errors import NonRetryableError, SkipStep
from llm_deploy.runners import LocalRunner
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.through_runner import run_python_step
from tests.support.engines import engine_dir_here

pytestmark = pytest.mark.timeout(300)


def spec(root, **params) -> DeploySpec:
    return DeploySpec.from_params({"engines_root": str(root), "max_input_len": 64, "max_output_len": 32,
                                   "benchmark_max_tokens": 16, **params})


def test_the_cli_prints_one_outcome_line_last_and_exits_by_status(tmp_path, capsys):
    code = main(["build_wheel", "--spec-json", spec(tmp_path).model_dump_json()])
    out = capsys.readouterr().out.splitlines()
    assert code == 4 and out[-1].startswith(OUTCOME_MARKER)
    assert parse_outcome(out)["status"] == "skip"


def test_bad_params_are_non_retryable_in_the_cli_too(tmp_path, capsys):
    assert main(["build_wheel", "--spec-json", json.dumps({"engines_root": str(tmp_path), "dtype": "fp4"})]) == 3
    assert "dtype" in parse_outcome(capsys.readouterr().out.splitlines())["error"]


def test_build_engine_as_a_subprocess_returns_the_record_the_step_returns(tmp_path, tiny_llama_checkpoint):
    s = spec(tmp_path)
    checkpoint = {"checkpoint_dir": str(tiny_llama_checkpoint), "manifest_sha256": "test"}
    record = run_python_step(LocalRunner(), "build_engine", s, checkpoint)
    assert record["engine_dir"] == str(engine_dir_here(s, "test")) and not record["reused"]
    assert volume.check_manifest(engine_dir_here(s, "test"), deep=True) == []


def test_step_exceptions_come_back_as_themselves(tmp_path):
    with pytest.raises(SkipStep, match="no TensorRT-LLM wheel"):
        run_python_step(LocalRunner(), "build_wheel", spec(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NonRetryableError, match="no \\*.safetensors"):
        run_python_step(LocalRunner(), "build_engine", spec(tmp_path),
                        {"checkpoint_dir": str(tmp_path / "empty"), "manifest_sha256": "x"})
