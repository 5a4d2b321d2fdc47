"""tests/tools/extract_flags.py reads flags from source text, following helpers, importing nothing."""

from __future__ import annotations

import json
import textwrap

from tests.tools import extract_flags

SCRIPT = '''
import argparse
from utils import add_common_args
from tensorrt_llm.plugin import add_plugin_argument
import module_that_does_not_exist  # never imported by the extractor

LEVELS = ["info", "debug"]


def parse_arguments():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_dir", type=str, required=True)
    parser.add_argument("--use_inflight_batching", action="store_true")
    parser.add_argument("--plugin", nargs="?", const="float16", default=False, choices=["float16", "bfloat16"])
    parser.add_argument("--level", choices=LEVELS)
    group = parser.add_argument_group("more")
    group.add_argument("--max_seq_len", "--max_decoder_seq_len", dest="max_seq_len", type=int, default=None)
    group.add_argument("--log", choices=severity_map.keys())
    parser = add_common_args(parser)
    add_plugin_argument(group)
    return parser


def unrelated():
    other = argparse.ArgumentParser()
    other.add_argument("--not_in_scope")
'''
UTILS = '''
def add_common_args(parser):
    parser.add_argument("--engine_dir", type=str, default="engine_outputs")
    parser.add_argument("--no_prompt_template", dest="use_prompt_template", action="store_false")
    return parser
'''
PLUGIN = '''
from typing import Literal, Optional
from pydantic import BaseModel, Field

Dtype = Literal["auto", "float16", None]


class PluginConfig(BaseModel):
    gemm_plugin: Optional[Dtype] = Field(default=None)
    context_fmha: bool = Field(default=True)
    tokens_per_block: int = Field(default=32)
    not_on_the_cli: bool = Field(default=False)


cli_plugin_args = ["gemm_plugin", "context_fmha", "tokens_per_block"]
'''


def record(tmp_path, *extra):
    files = {"script.py": SCRIPT, "utils.py": UTILS, "plugin.py": PLUGIN}
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    out = tmp_path / "out.json"
    extract_flags.main([
        "--release", "9.9.9", "--script", "script.py", "--repo", "o/r", "--tag", "v9.9.9", "--commit", "c" * 40,
        "--path", "script.py", "--source", str(tmp_path / "script.py"),
        "--local", f"utils.py={tmp_path / 'utils.py'}", "--local", f"plugin.py={tmp_path / 'plugin.py'}",
        "--source-note", "synthetic", "--function", "parse_arguments", "--out", str(out), *extra,
    ])
    return json.loads(out.read_text())


def test_flags_of_the_function_with_their_shape(tmp_path):
    data = record(tmp_path)
    flags = {flag["names"][0]: flag for flag in data["flags"]}
    assert list(flags) == ["--model_dir", "--use_inflight_batching", "--plugin", "--level", "--max_seq_len", "--log"]
    assert flags["--model_dir"]["required"] and flags["--model_dir"]["takes_value"]
    assert not flags["--use_inflight_batching"]["takes_value"]
    assert (flags["--plugin"]["nargs"], flags["--plugin"]["choices"]) == ("?", ["float16", "bfloat16"])
    assert flags["--level"]["choices"] == ["info", "debug"]  # resolved from the module constant
    assert flags["--max_seq_len"]["names"] == ["--max_seq_len", "--max_decoder_seq_len"]
    assert flags["--log"]["choices"] is None
    assert data["unresolved"] == ["--log: choices=severity_map.keys() is computed at run time (script.py)"]
    assert (data["repo"], data["tag"], data["commit"], data["exact"]) == ("o/r", "v9.9.9", "c" * 40, False)


def test_helpers_are_followed(tmp_path):
    data = record(tmp_path, "--helper", "add_common_args=utils.py", "--plugin-helper", "add_plugin_argument=plugin.py")
    flags = {flag["names"][0]: flag for flag in data["flags"]}
    assert flags["--engine_dir"]["origin"] == "utils.py:add_common_args"
    assert not flags["--no_prompt_template"]["takes_value"]
    assert flags["--gemm_plugin"]["choices"] == ["auto", "float16", "disable"]
    assert flags["--context_fmha"]["choices"] == ["enable", "disable"]
    assert flags["--tokens_per_block"]["choices"] is None and flags["--tokens_per_block"]["default"] == 32
    assert "--not_on_the_cli" not in flags and "--not_in_scope" not in flags
    assert data["helpers"] == [{"function": "add_common_args", "path": "utils.py"},
                               {"function": "add_plugin_argument", "path": "plugin.py"}]
