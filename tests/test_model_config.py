"""Parsing a config.pbtxt as Triton's ModelConfig: what both backends' repositories go through."""

from __future__ import annotations

import pytest

from llm_deploy.model_config import ModelRepoError, parse_model_config


def test_invalid_config_is_reported_with_its_file(tmp_path):
    bad = tmp_path / "broken" / "config.pbtxt"
    bad.parent.mkdir()
    bad.write_text('name: "broken"\nmax_batch_size: "eight"\n')

    with pytest.raises(ModelRepoError, match=r"broken/config.pbtxt is not a valid Triton model config"):
        parse_model_config(bad)


def test_config_name_must_match_its_directory(tmp_path):
    wrong = tmp_path / "ensemble" / "config.pbtxt"
    wrong.parent.mkdir()
    wrong.write_text('name: "not_ensemble"\n')

    with pytest.raises(ModelRepoError, match="differs from its directory"):
        parse_model_config(wrong)
