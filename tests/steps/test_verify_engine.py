"""verify_engine: the engine's greedy tokens must equal transformers' for the tutorial prompt."""

import pytest
from safetensors.torch import load_file, save_file

from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec
from llm_deploy.steps.build_engine import build_engine
from llm_deploy.steps.verify_engine import verify_engine


@pytest.fixture
def built(tmp_path, tiny_llama_checkpoint):
    spec = DeploySpec.from_params({"engines_root": str(tmp_path), "max_input_len": 64, "max_output_len": 32,
                                 "benchmark_max_tokens": 16})
    checkpoint = {"checkpoint_dir": str(tiny_llama_checkpoint)}
    return spec, build_engine(spec, checkpoint).to_xcom(), checkpoint


def test_a_faithful_engine_passes(built):
    spec, engine, checkpoint = built
    record = verify_engine(spec, engine, checkpoint)
    assert record.prompt == "How do I count to ten in French?"
    assert 0 < record.tokens <= 32


def test_a_wrong_engine_fails_with_both_texts(built):
    spec, engine, checkpoint = built
    path = f"{engine['engine_dir']}/model.safetensors"
    weights = load_file(path)
    weights["lm_head.weight"] = weights["lm_head.weight"].flip(0)  # same shapes, other tokens
    save_file(weights, path)
    with pytest.raises(NonRetryableError) as err:
        verify_engine(spec, engine, checkpoint)
    assert "engine:" in str(err.value) and "transformers:" in str(err.value)


def test_a_pass_marks_the_engine_verified_against_its_manifest(built):
    import hashlib
    import json
    from pathlib import Path

    from llm_deploy import engine_cache, volume

    spec, engine, checkpoint = built
    engine_dir = Path(engine["engine_dir"])
    assert not (engine_dir / engine_cache.MARKER).exists()

    record = verify_engine(spec, engine, checkpoint)

    marker = json.loads((engine_dir / engine_cache.MARKER).read_text())
    assert marker["manifest_sha256"] == hashlib.sha256((engine_dir / volume.MANIFEST).read_bytes()).hexdigest()
    assert marker["output_text"] == record.output_text
    assert volume.check_manifest(engine_dir, deep=True) == []  # the marker is no engine file
    assert engine_cache.verified_marker(engine_dir) == marker


def test_a_failed_check_leaves_no_marker(built):
    from pathlib import Path

    from llm_deploy import engine_cache

    spec, engine, checkpoint = built
    path = f"{engine['engine_dir']}/model.safetensors"
    weights = load_file(path)
    weights["lm_head.weight"] = weights["lm_head.weight"].flip(0)
    save_file(weights, path)
    with pytest.raises(NonRetryableError):
        verify_engine(spec, engine, checkpoint)
    assert not (Path(engine["engine_dir"]) / engine_cache.MARKER).exists()
