"""What every stand-in for an upstream script runs (see standins.py, which writes the stand-ins).

Run through runpy with FLAGS (the recorded flag set), SCRIPT (its key), RELEASE and CALLS (a
JSON-lines file each call is appended to) as globals. The argv is parsed by an argparse built
from the recorded flags (no abbreviations), so a flag the release does not accept, a missing
required flag or a value outside the recorded choices exits 2 like the real script. Then the
stand-in does the part of the real script's job that later steps depend on.

Run directly as ``standin_impl.py --serve <http_port> <model_repo> <site>`` it is the server that
the stand-in launch_triton_server.py leaves running: Triton's health endpoints and, for an llmapi
repository, what upstream's model.py does at load (model.yaml's triton_config, then
``LLM(**the other keys)`` from the stand-in wheel found under <site>) and its /generate. It runs
on the tests' Python (HOST_PYTHON), which has PyYAML and tritonclient as the NGC image has.
"""

import argparse
import http.server
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

TYPES = {"int": int, "float": float}


def build_parser(record):
    parser = argparse.ArgumentParser(prog=SCRIPT, allow_abbrev=False)  # noqa: F821 - runpy global
    for flag in record["flags"]:
        action = flag["action"]
        if action.endswith("BooleanOptionalAction"):
            action = argparse.BooleanOptionalAction
        kwargs = {"action": action, "required": flag["required"]}
        if flag["action"] in ("store", "append"):
            kind = TYPES.get(flag.get("type") or "")
            if kind:
                kwargs["type"] = kind
            if flag.get("nargs") is not None:
                kwargs["nargs"] = int(flag["nargs"]) if str(flag["nargs"]).isdigit() else flag["nargs"]
            default = flag.get("default")
            if default is not None and not isinstance(default, dict):  # {"expr": ...}: computed upstream
                kwargs["default"] = default
            choices = [c for c in (flag.get("choices") or []) if c is not None]
            if choices:
                kwargs["choices"] = [kind(c) if kind else str(c) for c in choices]
        if flag.get("dest"):
            kwargs["dest"] = flag["dest"]
        parser.add_argument(*flag["names"], **kwargs)
    return parser


def rank():
    return int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))


def world():
    return int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))


def write_wheel(dist_dir, version, trtllm_build="", llm_api=""):
    """A real (tiny) wheel, so pip installs it exactly as it installs the real one; with
    ``trtllm_build`` (a module's source), it brings the trtllm-build console script as the real
    wheel does, so each release's own trtllm-build is on PATH once its wheel is installed; with
    ``llm_api`` (a module's source), ``from tensorrt_llm import LLM, SamplingParams`` works."""
    dist = Path(dist_dir)
    dist.mkdir(parents=True, exist_ok=True)
    info = f"tensorrt_llm-{version}.dist-info"
    with zipfile.ZipFile(dist / f"tensorrt_llm-{version}-py3-none-any.whl", "w") as wheel:
        init = f'__version__ = "{version}"\n'
        if llm_api:
            wheel.writestr("tensorrt_llm/_standin_llm_api.py", llm_api)
            init += "from tensorrt_llm._standin_llm_api import LLM, SamplingParams  # noqa: F401\n"
        wheel.writestr("tensorrt_llm/__init__.py", init)
        if trtllm_build:
            wheel.writestr("tensorrt_llm/commands/__init__.py", "")
            wheel.writestr("tensorrt_llm/commands/build.py", trtllm_build)
            wheel.writestr(f"{info}/entry_points.txt", "[console_scripts]\ntrtllm-build = tensorrt_llm.commands.build:main\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: tensorrt_llm\nVersion: {version}\n")
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: standin\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


def require_tensorrt_llm():
    """The real engine scripts import tensorrt_llm first: so must the stand-ins."""
    import tensorrt_llm  # noqa: F401 - ImportError here means the wheel was never installed

    if tensorrt_llm.__version__ != RELEASE:  # noqa: F821 - runpy global
        sys.exit(f"tensorrt_llm {tensorrt_llm.__version__} installed, this script is from {RELEASE}")  # noqa: F821


def write_engine(out_dir, config, ranks):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for index in range(ranks):
        (out / f"rank{index}.engine").write_bytes(os.urandom(256))


def main(args):
    if SCRIPT == "build_wheel.py":  # noqa: F821
        write_wheel(args.dist_dir, RELEASE)  # noqa: F821
    elif SCRIPT == "build.py":  # noqa: F821
        require_tensorrt_llm()
        builder = {"tensor_parallel": args.tp_size, "pipeline_parallel": args.pp_size, "precision": args.dtype,
                   "max_batch_size": args.max_batch_size, "max_input_len": args.max_input_len,
                   "max_output_len": args.max_output_len, "paged_kv_cache": args.paged_kv_cache,
                   "remove_input_padding": args.remove_input_padding}
        write_engine(args.output_dir, {"builder_config": builder}, args.world_size)
    elif SCRIPT == "convert_checkpoint.py":  # noqa: F821
        require_tensorrt_llm()
        if not (Path(args.model_dir) / "config.json").is_file():
            sys.exit(f"no Hugging Face checkpoint in {args.model_dir}")
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        mapping = {"tp_size": args.tp_size, "pp_size": args.pp_size, "world_size": args.tp_size * args.pp_size}
        (out / "config.json").write_text(json.dumps({"dtype": args.dtype, "mapping": mapping}))
        for index in range(mapping["world_size"]):
            (out / f"rank{index}.safetensors").write_bytes(os.urandom(64))
    elif SCRIPT == "trtllm-build":  # noqa: F821
        require_tensorrt_llm()
        converted = json.loads((Path(args.checkpoint_dir) / "config.json").read_text())
        ranks = converted["mapping"]["world_size"]
        write_engine(args.output_dir, {"pretrained_config": converted,
                                       "build_config": {"max_batch_size": args.max_batch_size}}, ranks)
    elif SCRIPT == "run.py":  # noqa: F821
        require_tensorrt_llm()
        engines = sorted(Path(args.engine_dir).glob("*.engine"))
        if len(engines) != world():
            sys.exit(f"run.py under {world()} ranks, engine has {len(engines)}")
        if rank() == 0:
            text = f"stand-in completion of {args.input_text}"
            if RELEASE == "0.5.0":  # noqa: F821
                print(f'Input: "{args.input_text}"')
                print(f'Output: "{text}"')
            else:
                print(f'Input [Text 0]: "{args.input_text}"')
                print(f'Output [Text 0 Beam 0]: "{text}"')
    elif SCRIPT == "launch_triton_server.py":  # noqa: F821
        port = getattr(args, "http_port", None) or "8000"
        repo = Path(args.model_repo)
        if not (repo / "tensorrt_llm" / "config.pbtxt").is_file():
            sys.exit(f"no inflight_batcher_llm repository at {repo}")
        if getattr(args, "no_mpi", False) and args.world_size != 1:
            sys.exit("--no-mpi is single instance mode: world_size must be 1")  # upstream's assertion
        try:
            import tensorrt_llm
        except ImportError:
            site = ""
        else:
            site = str(Path(tensorrt_llm.__file__).parent.parent)
        # As upstream: start the server in the background and return at once.
        subprocess.Popen([HOST_PYTHON, IMPL, "--serve", str(port), str(repo), site])  # noqa: F821
    else:
        sys.exit(f"no stand-in behaviour for {SCRIPT}")  # noqa: F821


class Health(http.server.BaseHTTPRequestHandler):
    models: frozenset = frozenset()
    llm = None  # the llmapi model's LLM, once loaded
    llm_inputs: frozenset = frozenset()

    def do_GET(self):  # noqa: N802 - http.server's name
        # As Triton answers them: the server's health, and each model of the repository's readiness.
        ok = self.path in ("/v2/health/live", "/v2/health/ready") or self.path in {
            f"/v2/models/{name}/ready" for name in self.models}
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):  # noqa: N802
        # Triton's generate extension: JSON keys are input names of the model's config.pbtxt.
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.llm is None or self.path != "/v2/models/tensorrt_llm/generate":
            return self._answer(404, {"error": f"no generate endpoint at {self.path}"})
        unknown = sorted(set(body) - self.llm_inputs)
        if unknown:
            return self._answer(400, {"error": f"unexpected inference input(s) {unknown} for model 'tensorrt_llm'"})
        from tensorrt_llm import SamplingParams

        params = SamplingParams(max_tokens=body.get("sampling_param_max_tokens", 32))
        text = self.llm.generate([body["text_input"]], params)[0].outputs[0].text
        if not body.get("sampling_param_exclude_input_from_output", False):  # model.py's default echoes
            text = body["text_input"] + text
        return self._answer(200, {"model_name": "tensorrt_llm", "text_output": text})

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def load_llmapi_model(repo, site):
    """What upstream's llmapi model.py does at load, so a wrong repository fails as it would."""
    import yaml
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    sys.path.insert(0, site)
    from tensorrt_llm import LLM

    model_dir = Path(repo) / "tensorrt_llm"
    config = yaml.safe_load((model_dir / "1" / "model.yaml").read_text())
    triton = config.pop("triton_config")
    missing = [key for key in ("max_batch_size", "decoupled") if key not in triton]
    if missing:
        sys.exit(f"model.yaml triton_config lacks {missing}")
    pbtxt = model_config_pb2.ModelConfig()
    text_format.Parse((model_dir / "config.pbtxt").read_text(), pbtxt)
    # launch_triton_server.py disables auto-complete: only config.pbtxt makes the model decoupled.
    if pbtxt.model_transaction_policy.decoupled != bool(triton["decoupled"]):
        sys.exit(f"model.yaml says decoupled={triton['decoupled']}, config.pbtxt says "
                 f"{pbtxt.model_transaction_policy.decoupled}: streamed responses would be rejected")
    Health.llm = LLM(**config)
    Health.llm_inputs = frozenset(tensor.name for tensor in pbtxt.input)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        print(f"stand-in tritonserver serving {sys.argv[3]} on {sys.argv[2]}", flush=True)
        if (Path(sys.argv[3]) / "tensorrt_llm" / "1" / "model.yaml").is_file():
            load_llmapi_model(sys.argv[3], sys.argv[4])
        Health.models = frozenset(p.parent.name for p in Path(sys.argv[3]).glob("*/config.pbtxt"))
        http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Health).serve_forever()
    else:
        parsed = build_parser(FLAGS).parse_args()  # noqa: F821
        with open(CALLS, "a") as calls:  # noqa: F821
            calls.write(json.dumps({"script": SCRIPT, "argv": sys.argv[1:], "rank": rank()}) + "\n")  # noqa: F821
        main(parsed)
