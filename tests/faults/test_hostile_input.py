"""Hostile input, as one visible table: every case gets a clear error before any work.

1. Params (DeploySpec is the edge): shell metacharacters and a newline in EVERY string param,
   path traversal, absolute paths outside the volume, huge and negative numbers, unknown enum
   values and params. Each refused by name. The few strings that may legitimately hold such
   characters (paths on the volume, the prompt) are shown to reach argv verbatim, as one element.
2. The Hub (the fake Hub on loopback): a gated repo answering 401 and 403, a missing revision.
3. Requests to the running server, through /generate, /generate_stream and the gRPC ensemble:
   non-UTF-8 prompts, prompts beyond max_input_len, max_tokens beyond max_output_len. Each gets
   its own clear error while the server keeps serving the others.
4. An audit of plugins/: every subprocess call takes an argv list, never a shell.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import typing
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from llm_deploy.errors import NonRetryableError
from llm_deploy.spec import DeploySpec, SpecError
from llm_deploy.steps.download_weights import download_weights
from llm_deploy.steps.through_runner import python_step_command

from tests.faults.conftest import deploy
from tests.fixtures.hf_hub import FakeHub, tiny_model_files

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"
HOSTILE = "x; rm -rf / $(id) `reboot` | cat /etc/passwd > /tmp/o &\nnext"
# Strings that may carry metacharacters, since they are file names or text; never newlines
# (except the prompt): they travel as JSON inside one argv element and no shell ever sees them.
FREE_TEXT = {"benchmark_prompt"}
PATHS = {"model_local_dir", "backend_repo_dir"}
# Params that only mean something with another param set; the hostile value is tried there.
CONTEXT = {"model_id": {"model_source": "huggingface"}, "model_local_dir": {"model_source": "local"}}


def string_params() -> list[str]:
    """Every DeploySpec param that holds strings: str, a Literal of strings, or a list of those."""
    names = []
    for name, field in DeploySpec.model_fields.items():
        annotation = field.annotation
        inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
        if inner is str or (typing.get_origin(inner) is typing.Literal and all(isinstance(a, str) for a in typing.get_args(inner))):
            names.append(name)
    return names


def hostile_value(name: str, text: str):
    return [text] if typing.get_origin(DeploySpec.model_fields[name].annotation) is list else text


def params(**values) -> dict:
    return {"engines_root": "/vol", **values}


# --- 1. params ---------------------------------------------------------------------------------

# (case id, params, the param the error must name, a fragment of what it must say)
PARAM_CASES = [
    *[(f"metachar+newline:{name}", params(**CONTEXT.get(name, {}), **{name: hostile_value(name, HOSTILE)}),
       name, "") for name in string_params() if name not in FREE_TEXT],
    ("traversal:model_local_dir", params(model_source="local", model_local_dir="../../etc"),
     "model_local_dir", "lies outside the engines volume /vol"),
    ("traversal:backend_repo_dir", params(backend_repo_dir="src/../../etc"),
     "backend_repo_dir", "lies outside the engines volume /vol"),
    ("traversal:engines_root", params(engines_root="/vol/../etc"), "engines_root", "without '..'"),
    ("traversal:model_revision", params(model_revision="v1/../../etc"), "model_revision", "'..'"),
    ("traversal:hf_allow_patterns", params(hf_allow_patterns=["../*.safetensors"]), "hf_allow_patterns",
     "plain file glob"),
    ("outside:model_local_dir", params(model_source="local", model_local_dir="/etc"), "model_local_dir",
     "lies outside the engines volume /vol"),
    ("outside:backend_repo_dir", params(backend_repo_dir="/root/.ssh"), "backend_repo_dir",
     "lies outside the engines volume /vol"),
    ("relative:engines_root", params(engines_root="engines"), "engines_root", "must be an absolute path"),
    ("huge:max_input_len", params(max_input_len=10**12), "max_input_len", "integers 1..131072"),
    ("huge:benchmark_requests", params(benchmark_requests=10**9), "benchmark_requests", "integers 1..100000"),
    ("huge:world_size", params(world_size=2**40), "world_size", "integers 1..64"),
    ("negative:max_output_len", params(max_output_len=-5), "max_output_len", "integers 1..131072"),
    ("negative:max_batch_size", params(max_batch_size=-1), "max_batch_size", "integers 1..4096"),
    ("privileged:http_port", params(http_port=80), "http_port", "integers 1024..65535"),
    ("out-of-range:grpc_port", params(grpc_port=70000), "grpc_port", "integers 1024..65535"),
    ("enum:dtype", params(dtype="fp8"), "dtype", "float32, float16, bfloat16"),
    ("enum:backend", params(backend="vllm"), "backend", "torch, trtllm"),
    ("enum:model_source", params(model_source="s3"), "model_source", "builtin, huggingface, local"),
    ("enum:benchmark_targets", params(benchmark_targets=["perf_analyzer"]), "benchmark_targets.0", "'grpc_ensemble'"),
    ("enum:trtllm_release", params(trtllm_release="0.4.0"), "trtllm_release", "0.5.0, 0.19.0, 0.20.0"),
    ("unknown param", params(engines_rot="/vol"), "engines_rot", "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(
    ("given", "named", "says"),
    [pytest.param(p, n, s, id=i) for i, p, n, s in PARAM_CASES],
)
def test_bad_params_are_refused_by_name_before_any_work(given, named, says):
    with pytest.raises(SpecError) as refused:
        DeploySpec.from_params(given)
    message = str(refused.value)
    # A field's own check: "- name: ..." ("name.0" for a list item); a cross-field check: "- params: name=..."
    name = re.escape(named)
    assert re.search(rf"^  - ({name}(\.\d+)?: |params: {name}=)", message, re.M), message
    assert says in message


@pytest.mark.parametrize("name", sorted(PATHS | FREE_TEXT))
def test_strings_that_may_hold_metacharacters_reach_argv_verbatim_as_one_element(name, tmp_path):
    value = HOSTILE if name in FREE_TEXT else HOSTILE.replace("\n", " ")
    spec = DeploySpec.from_params({"engines_root": str(tmp_path), **CONTEXT.get(name, {}), name: value})

    command = python_step_command("build_engine", spec, {"checkpoint_dir": str(tmp_path / "m")})

    [spec_json] = [arg for arg in command.argv if arg.startswith("{") and name in arg]
    assert json.loads(spec_json)[name] == value
    assert command.argv[:3] == ("python3", "-m", "llm_deploy.cli")  # a program, not a shell
    assert DeploySpec.from_params(json.loads(spec_json)) == spec  # what the step process rebuilds


def test_newlines_are_refused_in_path_params(tmp_path):
    for name in sorted(PATHS):
        with pytest.raises(SpecError, match="must not contain control characters"):
            DeploySpec.from_params({"engines_root": str(tmp_path), **CONTEXT.get(name, {}), name: "dir\nrm -rf /"})


# --- 2. the Hub ------------------------------------------------------------------------------------

REPO = "acme/gated-llama"


@pytest.mark.parametrize(("case", "token", "says"), [
    ("gated-401-no-token", None, "no token is configured"),
    ("gated-403-wrong-token", "hf_wrongTokenWrongTokenWrongToken", "refused the configured token"),
    ("missing-revision", "fixture", "revision 'v9.9' of model acme/gated-llama does not exist"),
])
def test_hub_refusals_fail_for_good_before_any_download(hf_hub: FakeHub, tmp_path, case, token, says):
    hf_hub.add_repo(REPO, tiny_model_files(), gated=True)
    revision = "v9.9" if case == "missing-revision" else "main"
    spec = DeploySpec(engines_root=str(tmp_path), model_source="huggingface", model_id=REPO, model_revision=revision)

    with pytest.raises(NonRetryableError, match=says):
        download_weights(spec, hf_hub.token if token == "fixture" else token, endpoint=hf_hub.endpoint)

    assert hf_hub.count("GET", server="cdn") == 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# --- 3. requests to the running server ------------------------------------------------------------

GOOD = {"text_input": "How do I count to ten in French?", "max_tokens": 8, "bad_words": "", "stop_words": ""}
OVERSIZE = "The quick brown fox jumps over the lazy dog. " * 20  # 221 tokens (BOS included) with the tiny tokenizer; max_input_len is 64
NOT_UTF8 = "déjà vu".encode("latin-1")


@pytest.fixture(scope="module")
def server(tiny_llama_checkpoint, tmp_path_factory, free_ports_factory):
    from llm_deploy.steps.serve import start_server, stop_server

    root = tmp_path_factory.mktemp("hostile")
    deployment = deploy(tiny_llama_checkpoint, root / "engines", free_ports_factory())
    record = start_server(deployment.spec, deployment.repo, "hostile-run").to_xcom()
    try:
        yield record
    finally:
        stop_server(deployment.spec, record)
        from tests.faults.processes import assert_no_server_processes

        assert_no_server_processes([root], [record["pgid"]])


def post(server: dict, body: bytes, endpoint: str = "generate") -> tuple[int, str]:
    request = urllib.request.Request(f"{server['http_url']}/v2/models/ensemble/{endpoint}", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - local test server
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def body(**changes) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


HTTP_CASES = [
    # (case id, endpoint, raw body, HTTP status, what the error must say)
    ("http-generate:latin-1 prompt", "generate",
     b'{"text_input": "' + NOT_UTF8 + b'", "max_tokens": 8, "bad_words": "", "stop_words": ""}',
     400, "preprocessing: QUERY is not valid UTF-8 text: byte b'\\\\xe9' at offset 1 of 7"),
    ("http-generate:lone surrogate", "generate", body(text_input="a\udcff"),
     400, "preprocessing: QUERY is not valid UTF-8 text"),
    ("http-generate:oversize prompt", "generate", body(text_input=OVERSIZE),
     400, "tensorrt_llm: input length 221 exceeds the engine's max_input_len=64"),
    ("http-generate_stream:oversize prompt", "generate_stream", body(text_input=OVERSIZE),
     400, "tensorrt_llm: input length 221 exceeds the engine's max_input_len=64"),
    ("http-generate:max_tokens beyond max_output_len", "generate", body(max_tokens=10**6),
     400, "request_output_len=1000000 must be between 1 and the engine's max_output_len=32"),
    # Triton's own JSON parser refuses it, with its own (500) status, before any model runs.
    ("http-generate:negative max_tokens", "generate", body(max_tokens=-3),
     500, "attempt to access JSON non-unsigned-integer as unsigned-integer"),
]


@pytest.mark.e2e
@pytest.mark.parametrize(("endpoint", "raw", "status", "says"), [c[1:] for c in HTTP_CASES],
                         ids=[c[0] for c in HTTP_CASES])
def test_bad_http_requests_get_their_own_error_and_the_server_keeps_serving(server, endpoint, raw, status, says):
    got_status, answer = post(server, raw, endpoint)

    assert (got_status, says in answer) == (status, True), answer
    ok_status, ok = post(server, body())
    assert ok_status == 200 and json.loads(ok)["text_output"]


async def _grpc(server: dict, requests: list) -> list:
    import grpc
    from llm_deploy.bench.stream_client import stream_one
    from tritonclient.grpc import service_pb2_grpc

    async with grpc.aio.insecure_channel(server["grpc_url"]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        return await asyncio.gather(*(stream_one(stub, request) for request in requests))


def _with_raw_prompt(request, prompt: bytes):
    from tritonclient.utils import serialize_byte_tensor

    request.raw_input_contents[0] = serialize_byte_tensor(np.array([[prompt]], dtype=object)).item()
    return request


@pytest.mark.e2e
def test_bad_grpc_stream_requests_fail_alone_among_good_ones(server):
    from llm_deploy.bench.stream_client import ensemble_request

    bad = {
        "grpc-ensemble:latin-1 prompt": (_with_raw_prompt(ensemble_request("x", 8), NOT_UTF8),
                                         "preprocessing: QUERY is not valid UTF-8 text"),
        "grpc-ensemble:oversize prompt": (ensemble_request(OVERSIZE, 8),
                                          "tensorrt_llm: input length 221 exceeds the engine's max_input_len=64"),
        "grpc-ensemble:max_tokens beyond max_output_len": (ensemble_request("Hi", 10**6),
                                                           "must be between 1 and the engine's max_output_len=32"),
    }
    good = [ensemble_request(GOOD["text_input"], 8) for _ in range(3)]

    # Bad and good requests in flight together: the batch must not fail as a whole.
    timings = asyncio.run(_grpc(server, [request for request, _ in bad.values()] + good))

    for (case, (_, says)), timing in zip(bad.items(), timings):
        assert timing.error and says in timing.error, (case, timing.error)
    for timing in timings[len(bad):]:
        assert timing.error is None and timing.tokens > 0 and timing.text


# --- 4. no shell ------------------------------------------------------------------------------------

SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}


def shell_uses(source: str) -> list[str]:
    """Calls that hand a command line to a shell: shell=True, os.system/popen, or a str command."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            found.append(f"line {node.lineno}: shell=")
        if owner == "os" and name in {"system", "popen"} or name in {"getoutput", "getstatusoutput"}:
            found.append(f"line {node.lineno}: {owner}.{name}")
        if owner == "subprocess" and name in SUBPROCESS_CALLS and node.args \
                and isinstance(node.args[0], (ast.Constant, ast.JoinedStr, ast.BinOp)):
            found.append(f"line {node.lineno}: subprocess.{name} with a command string")
    return found


def test_the_audit_catches_what_it_looks_for():
    assert shell_uses("import os, subprocess\nsubprocess.run(f'ls {x}', shell=True)\nos.system('id')\n"
                      "subprocess.Popen('ls -l')\n") == [
        "line 2: shell=", "line 2: subprocess.run with a command string", "line 3: os.system",
        "line 4: subprocess.Popen with a command string"]
    assert shell_uses("import subprocess\nsubprocess.run(['ls', x], check=True)\n") == []


def test_no_plugin_code_runs_a_shell():
    offenders = {str(path.relative_to(PLUGINS)): uses for path in sorted(PLUGINS.rglob("*.py"))
                 if (uses := shell_uses(path.read_text()))}
    assert offenders == {}
