"""Run our python-backend models in-process, without tritonserver.

Inside Triton, ``triton_python_backend_utils`` is a pure-Python file plus classes the stub injects
from C++ (Tensor, InferenceResponse, TritonError, Logger). Here the real file from the
nvidia-pytriton wheel is loaded and small stand-ins for the C++ classes are added, so the
models' own code runs unchanged; what only the real stub can check is left to tests/e2e.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest

MODELS_DIR = Path(__file__).resolve().parents[2] / "plugins" / "llm_deploy" / "triton_models"


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class TritonError:
    def __init__(self, message: str) -> None:
        self._message = message

    def message(self) -> str:
        return self._message


class InferenceResponse:
    def __init__(self, output_tensors, error: TritonError | None = None) -> None:
        self._outputs, self._error = list(output_tensors), error

    def output_tensors(self) -> list[Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output(self, name: str) -> np.ndarray | None:
        for tensor in self._outputs:
            if tensor.name() == name:
                return tensor.as_numpy()
        return None


class Logger:
    messages: list[tuple[str, str]] = []

    @classmethod
    def log_info(cls, message: str) -> None:
        cls.messages.append(("info", message))

    @classmethod
    def log_warn(cls, message: str) -> None:
        cls.messages.append(("warn", message))

    @classmethod
    def log_error(cls, message: str) -> None:
        cls.messages.append(("error", message))


class ResponseSender:
    """Records what a decoupled model sends; ``finished`` is set by the FINAL flag."""

    def __init__(self, final_flag: int, requested: tuple[str, ...] = ()) -> None:
        self.requested = requested
        self.sent: list[tuple[InferenceResponse | None, int]] = []
        self.finished = threading.Event()
        self.cancelled = False
        self.delay_s = 0.0  # > 0 slows the batcher thread down, to make races deterministic
        self._final_flag = final_flag

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if self.finished.is_set():
            raise RuntimeError("a response was sent after the FINAL flag")
        unasked = [t.name() for t in (response.output_tensors() if response else []) if t.name() not in self.requested]
        if unasked:
            # The real stub drops these inside send() with the GIL released; freeing their arrays
            # there segfaults a Python 3.12 stub (benchmarks/gpu_stub_probe.py, probe "pruned").
            raise RuntimeError(f"response carries {unasked}, which the request did not ask for")
        self.sent.append((response, flags))
        time.sleep(self.delay_s)
        if flags & self._final_flag:
            self.finished.set()

    def is_cancelled(self) -> bool:
        return self.cancelled

    def responses(self) -> list[InferenceResponse]:
        return [response for response, _ in self.sent if response is not None]


# What Triton lists as requested when a client names no outputs: all of the model's. Only the
# tensorrt_llm model reads it, so these are its outputs.
ALL_OUTPUTS = ("output_ids", "sequence_length")


class Request:
    def __init__(self, inputs: dict[str, np.ndarray], request_id: str = "", final_flag: int = 1,
                 outputs: tuple[str, ...] = ALL_OUTPUTS) -> None:
        self._inputs = [Tensor(name, value) for name, value in inputs.items()]
        self._request_id = request_id
        self._outputs = outputs
        self.sender = ResponseSender(final_flag, outputs)

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def request_id(self) -> str:
        return self._request_id

    def get_response_sender(self) -> ResponseSender:
        return self.sender

    def requested_output_names(self) -> list[str]:
        return list(self._outputs)

    def is_cancelled(self) -> bool:
        return self.sender.cancelled


def _load_pb_utils() -> types.ModuleType:
    spec = importlib.util.find_spec("pytriton")
    assert spec is not None and spec.submodule_search_locations, "nvidia-pytriton is required"
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver/backends/python/triton_python_backend_utils.py"
    module_spec = importlib.util.spec_from_file_location("triton_python_backend_utils", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    module.Tensor = Tensor
    module.InferenceResponse = InferenceResponse
    module.TritonError = TritonError
    module.Logger = Logger
    return module


@pytest.fixture
def pb_utils(monkeypatch) -> types.ModuleType:
    module = _load_pb_utils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    Logger.messages = []
    return module


@pytest.fixture
def load_model(pb_utils, monkeypatch):
    """``load_model("preprocessing")``: the model file as Triton loads it, a fresh module each time."""

    # Triton puts the version dir, which holds the copied helper modules, on sys.path.
    monkeypatch.syspath_prepend(str(MODELS_DIR))
    # Each test imports the helpers afresh, against its own triton_python_backend_utils.
    for helper in MODELS_DIR.glob("*.py"):
        monkeypatch.delitem(sys.modules, helper.stem, raising=False)

    def load(name: str) -> types.ModuleType:
        module_name = f"model_under_test_{name}"
        spec = importlib.util.spec_from_file_location(module_name, MODELS_DIR / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        # Registered like the stub does; dataclasses look their module up while being created.
        monkeypatch.setitem(sys.modules, module_name, module)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def model_args():
    """``model_args(config_pbtxt)``: initialize()'s args, with model_config as Triton serialises it (defaults included)."""
    from google.protobuf import json_format

    from llm_deploy.model_config import parse_model_config

    def make(config_path: Path) -> dict[str, str]:
        config = parse_model_config(config_path)
        as_dict = json_format.MessageToDict(
            config, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return {
            "model_config": json.dumps(as_dict),
            "model_name": config.name,
            "model_version": "1",
            "model_repository": str(config_path.parent),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }

    return make


@pytest.fixture
def rendered_repo(tmp_path, tiny_engine_dir, tiny_llama_checkpoint):
    """``rendered_repo(**spec_overrides)``: a torch-backend repo rendered for the tiny engine."""
    from llm_deploy.backends.torch.model_repo import render_repository
    from llm_deploy.spec import DeploySpec

    def render(decoupled: bool = True, **overrides) -> Path:
        spec = DeploySpec(engines_root=str(tmp_path), max_batch_size=4, max_input_len=64,
                          max_output_len=32, benchmark_max_tokens=16, **overrides)
        out = tmp_path / ("repo-decoupled" if decoupled else "repo")
        render_repository(spec, engine_dir=tiny_engine_dir, tokenizer_dir=tiny_llama_checkpoint,
                          out_dir=out, decoupled=decoupled)
        return out

    return render


@pytest.fixture
def make_request():
    """``make_request({name: array}, request_id="", outputs=(...))``: an InferenceRequest stand-in
    with a sender; ``outputs`` are the names the client asked for (default: all)."""
    return Request
