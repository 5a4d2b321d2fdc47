"""A synthetic NVIDIA/TensorRT-LLM release, as files a local server can serve to the release probe.

Built from a recorded release (tests/data/upstream/<release>/*.json and the template copies of
tests/fixtures/upstream/TensorRT-LLM-v<release>/): every recorded flag set is rendered back into
Python source with one ``parser.add_argument(...)`` per flag (helpers and trtllm-build's
PluginConfig in their own files), so the probe's extractor reads real Python, as it would read
upstream's. A test then changes the records or templates (drop a flag, add a placeholder) to
stand for the next release.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parents[1] / "data" / "upstream"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "upstream"
_STRING_ACTIONS = {"store", "store_true", "store_false", "store_const", "append", "append_const", "count",
                   "help", "version", "extend"}


@dataclass
class SyntheticRelease:
    """Flag-set records (script key -> record) and templates (repository path -> text)."""

    records: dict[str, dict[str, Any]]
    templates: dict[str, str]
    dockerfile: str = 'ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver\nARG TRITON_BASE_TAG=26.03-py3\n'
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_recorded(cls, release: str) -> SyntheticRelease:
        records = {path.stem: json.loads(path.read_text()) for path in sorted((DATA / release).glob("*.json"))
                   if path.stem != "LLM"}
        root = FIXTURES / f"TensorRT-LLM-v{release}"
        templates = {str(path.relative_to(root)): path.read_text() for path in sorted(root.rglob("*"))
                     if path.is_file() and path.name != "README.md"}
        return cls(records, templates)

    def copy(self) -> SyntheticRelease:
        return copy.deepcopy(self)

    def remove_flag(self, script: str, flag: str) -> None:
        flags = self.records[script]["flags"]
        kept = [record for record in flags if flag not in record["names"]]
        assert len(kept) == len(flags) - 1, f"{script} has no {flag}"
        self.records[script]["flags"] = kept

    def add_placeholder(self, template: str, name: str) -> None:
        """A new parameter of a model's config.pbtxt, filled from ${name} as upstream's are."""
        self.templates[template] += (f'\nparameters: {{\n  key: "{name}"\n  value: {{\n'
                                     f'    string_value: "${{{name}}}"\n  }}\n}}\n')

    def files(self) -> dict[str, str]:
        """Repository path -> text: every script source, helper module and template."""
        files = {**self.templates, "docker/Dockerfile.multi": self.dockerfile, **self.extra}
        for record in self.records.values():
            files |= render_sources(record)
        return files


def render_sources(record: dict[str, Any]) -> dict[str, str]:
    """The script (and its helpers' modules) whose add_argument calls give record's flags."""
    main, helpers, plugin = [], {}, {}
    for flag in record["flags"]:
        origin = flag["origin"]
        if "(PluginConfig." in origin:
            plugin.setdefault(origin.split(" (")[0], []).append(flag)
        elif ":" in origin:
            helpers.setdefault(origin, []).append(flag)
        else:
            main.append(flag)
    calls = [f"    {name}(parser)" for name in
             [origin.split(":")[1] for origin in helpers] + [origin.split(":")[1] for origin in plugin]]
    sources = {record["path"]: "\n".join([
        f'"""Synthetic {record["script"]} of release {record["release"]} (llm-deploy tests)."""',
        "import argparse", "", "",
        "def parse_arguments():",
        "    parser = argparse.ArgumentParser()",
        *[f"    parser.add_argument({_arguments(flag)})" for flag in main],
        *calls,
        "    return parser.parse_args()", ""])}
    for origin, flags in helpers.items():
        path, name = origin.split(":")
        sources[path] = "\n".join([f"def {name}(parser):",
                                   *[f"    parser.add_argument({_arguments(flag)})" for flag in flags],
                                   "    return parser", ""])
    for origin, flags in plugin.items():
        path, name = origin.split(":")
        fields = [f"    {flag['names'][0][2:]}: {_annotation(flag['choices'])} = Field(default={_value(flag['default'])})"
                  for flag in flags]
        sources[path] = "\n".join([
            "from typing import Literal", "", "from pydantic import BaseModel, Field", "", "",
            "class PluginConfig(BaseModel):", *fields, "", "",
            f"cli_plugin_args = {[flag['names'][0][2:] for flag in flags]!r}", "", "",
            f"def {name}(parser):",
            "    for key in cli_plugin_args:",
            "        parser.add_argument('--' + key)",
            "    return parser", ""])
    return sources


def _arguments(flag: dict[str, Any]) -> str:
    parts = [repr(name) for name in flag["names"]]
    if flag["dest"] is not None:
        parts.append(f"dest={flag['dest']!r}")
    if flag["action"] != "store":
        action = flag["action"]
        parts.append(f"action={action!r}" if action in _STRING_ACTIONS else f"action={action}")
    if flag["nargs"] is not None:
        parts.append(f"nargs={flag['nargs']!r}")
    if flag["required"]:
        parts.append("required=True")
    if flag["choices"] is not None:
        parts.append(f"choices={flag['choices']!r}")
    if flag["default"] is not None:
        parts.append(f"default={_value(flag['default'])}")
    if flag["type"] is not None:
        parts.append(f"type={flag['type']}")
    return ", ".join(parts)


def _value(value: Any) -> str:
    return value["expr"] if isinstance(value, dict) and set(value) == {"expr"} else repr(value)


def _annotation(choices: list[Any] | None) -> str:
    if choices is None:
        return "int"
    if choices == ["enable", "disable"]:
        return "bool"
    return "Literal[" + ", ".join("None" if choice == "disable" else repr(choice) for choice in choices) + "]"
