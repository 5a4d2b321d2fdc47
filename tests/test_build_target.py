"""What an engine was built for, and the refusal to serve it anywhere else."""

from __future__ import annotations

import pytest
from llm_deploy.build_target import CPU, BuildTarget, gpu_of, require_same_target
from llm_deploy.errors import NonRetryableError

IMAGE = "nvcr.io/nvidia/tritonserver:26.04-trtllm-python-py3"
H200 = BuildTarget("tensorrt_llm 1.2.1, TensorRT 10.13.0", IMAGE, "NVIDIA H200", "9.0")


def test_the_same_target_is_served():
    require_same_target("/vol/engines/e1", H200, BuildTarget.from_dict(H200.to_dict()))


@pytest.mark.parametrize(("here", "named"), [
    (BuildTarget("tensorrt_llm 1.2.0, TensorRT 10.11.0", IMAGE, "NVIDIA H200", "9.0"), "another runtime"),
    (BuildTarget(H200.runtime, "nvcr.io/nvidia/tritonserver:26.03-trtllm-python-py3", "NVIDIA H200", "9.0"),
     "another image"),
    (BuildTarget(H200.runtime, IMAGE, "NVIDIA L40S", "8.9"), "another GPU"),
])
def test_another_release_image_or_gpu_is_refused_naming_both(here, named):
    with pytest.raises(NonRetryableError) as refused:
        require_same_target("/vol/engines/e1", H200, here)
    message = str(refused.value)
    assert named in message and H200.describe() in message and here.describe() in message
    assert "/vol/engines/e1" in message and "Rebuild it for this host" in message


def test_an_engine_without_a_recorded_target_is_refused_with_the_remedy():
    with pytest.raises(NonRetryableError, match="records no build target.*delete it and rerun deploy_llm"):
        require_same_target("/vol/engines/old", None, H200)


def test_descriptions_read_as_sentences():
    assert H200.describe() == f"tensorrt_llm 1.2.1, TensorRT 10.13.0 in {IMAGE}, for NVIDIA H200 (compute capability 9.0)"
    assert BuildTarget("torch 2.13.0", "", CPU).describe() == "torch 2.13.0 on the worker itself, for cpu"


def test_one_gpu_type_is_taken_and_mixed_types_are_refused():
    assert gpu_of([("NVIDIA H200", "9.0"), ("NVIDIA H200", "9.0")]) == ("NVIDIA H200", "9.0")
    with pytest.raises(NonRetryableError, match="different types.*NVIDIA H200.*NVIDIA L40S"):
        gpu_of([("NVIDIA H200", "9.0"), ("NVIDIA L40S", "8.9")])
    with pytest.raises(NonRetryableError, match="lists no GPU"):
        gpu_of([])
