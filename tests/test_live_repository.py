"""The deployment's model repository: each version's models under names of their own, and the
ensemble routed to one version at a time."""

from __future__ import annotations

import pytest

from llm_deploy.backends.torch.model_repo import render_repository
from llm_deploy.deployment import live_repository as live
from llm_deploy.errors import NonRetryableError
from llm_deploy.model_config import CONFIG, parse_model_config
from llm_deploy.spec import DeploySpec


@pytest.fixture
def candidate(tmp_path, tiny_engine_dir, tiny_llama_checkpoint):
    def render(name: str, max_batch_size: int):
        spec = DeploySpec(engines_root=str(tmp_path), max_batch_size=max_batch_size, max_input_len=64,
                          max_output_len=32, benchmark_max_tokens=16)
        out = tmp_path / "candidates" / name
        render_repository(spec, engine_dir=tiny_engine_dir, tokenizer_dir=tiny_llama_checkpoint, out_dir=out)
        return out
    return render


def test_a_version_is_the_candidates_models_under_versioned_names(tmp_path, candidate):
    directory = tmp_path / "deployments" / "tiny"

    ensemble, names = live.add_version(directory, candidate("a", 4), 1)

    assert ensemble == "ensemble"
    assert names == {"preprocessing": "preprocessing_v1", "tensorrt_llm": "tensorrt_llm_v1",
                     "postprocessing": "postprocessing_v1"}
    for live_name in names.values():
        config = parse_model_config(directory / "repository" / live_name / CONFIG)  # name == directory
        assert (directory / "repository" / live_name / "1" / "model.py").is_file()
        assert config.max_batch_size == 4
    assert (directory / "ensembles" / "v1.pbtxt").is_file()
    assert not (directory / "repository" / "ensemble").exists()  # routed only when it goes live


def test_the_ensemble_routes_to_one_version_and_can_be_put_back(tmp_path, candidate):
    directory = tmp_path / "deployments" / "tiny"
    _, first = live.add_version(directory, candidate("a", 4), 1)
    _, second = live.add_version(directory, candidate("b", 2), 2)
    live.route_ensemble(directory, "ensemble", 1, first)

    live.route_ensemble(directory, "ensemble", 2, second)

    config = parse_model_config(directory / "repository" / "ensemble" / CONFIG)
    assert [s.model_name for s in config.ensemble_scheduling.step] == [
        "preprocessing_v2", "tensorrt_llm_v2", "postprocessing_v2"]
    assert list(config.version_policy.specific.versions) == [2] and config.max_batch_size == 2
    assert (directory / "repository" / "ensemble" / "2").is_dir()
    live.restore_ensemble(directory, "ensemble")
    restored = parse_model_config(directory / "repository" / "ensemble" / CONFIG)
    assert list(restored.version_policy.specific.versions) == [1]


def test_a_dropped_version_leaves_no_file(tmp_path, candidate):
    directory = tmp_path / "deployments" / "tiny"
    _, names = live.add_version(directory, candidate("a", 4), 1)
    live.route_ensemble(directory, "ensemble", 1, names)

    live.remove_version(directory, "ensemble", 1, names)

    assert sorted(p.name for p in (directory / "repository").iterdir()) == ["ensemble"]
    assert not (directory / "repository" / "ensemble" / "1").exists()
    assert not (directory / "ensembles" / "v1.pbtxt").exists()


def test_a_repository_without_an_ensemble_is_refused(tmp_path, candidate):
    repo = candidate("a", 4)
    for path in (repo / "ensemble").rglob("*"):
        if path.is_file():
            path.unlink()
    with pytest.raises(NonRetryableError, match="has 0 .*llmapi flow serves tensorrt_llm alone"):
        live.add_version(tmp_path / "deployments" / "tiny", repo, 1)
