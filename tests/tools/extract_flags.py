#!/usr/bin/env python3
"""Record the command-line flags an upstream script accepts, read from its source with ``ast``.

Nothing upstream is imported or run: the script's ``add_argument`` calls are read as syntax.
Output: ``{repo, tag, commit, path, source, flags, positionals, unresolved, ...}`` as JSON, the
data the trtllm backend's tests hold every generated argv against.

Where flags come from:

* every ``<anything>.add_argument(...)`` call in the script (or in one function of it, with
  ``--function``), argument groups included;
* ``--helper NAME=PATH``: when the script calls ``NAME(parser)`` (e.g. run.py's
  ``add_common_args`` from examples/utils.py), the ``add_argument`` calls inside ``def NAME`` of
  PATH are followed too;
* ``--plugin-helper NAME=PATH``: trtllm-build's ``add_plugin_argument`` builds one flag per
  field of ``PluginConfig`` listed in ``cli_plugin_args`` at run time; those flags are derived
  from the class's annotations: ``Literal[...]`` -> its values as choices (``None`` spelled
  "disable"), ``bool`` -> enable/disable, ``str`` -> the module's ``plugin_options``, anything else
  takes a value.

What cannot be read statically (choices computed at run time, e.g. ``severity_map.keys()``; a
``type=`` function that validates values) is listed under ``unresolved`` and the flag's
``choices`` is left null, so a checker knows the value was not constrained by the recording.

Sources: ``--git-dir`` reads PATH (and helper paths) at ``--commit`` from a git repository;
``--source FILE`` reads a local file instead (then ``--source-note`` should say where it came from).

Example:
    python tests/tools/extract_flags.py --release 0.5.0 --script build.py \\
        --repo NVIDIA/TensorRT-LLM --tag v0.5.0 --commit ffd5af342a817a2689d38e4af2cc59ded877e339 \\
        --path examples/llama/build.py --git-dir /work/.mirror/.../repo --function parse_arguments \\
        --out tests/data/upstream/0.5.0/build.py.json
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

VALUELESS_ACTIONS = {"store_true", "store_false", "store_const", "append_const", "count", "help", "version"}
SCHEMA_VERSION = 1


class SourceReader:
    """Reads upstream files either from a git object store at one commit, or from local files."""

    def __init__(self, git_dir: str | None, commit: str, local: dict[str, str]):
        self.git_dir, self.commit, self.local = git_dir, commit, local

    def read(self, path: str) -> str:
        if path in self.local:
            return Path(self.local[path]).read_text()
        if not self.git_dir:
            raise SystemExit(f"no source for {path}: give --git-dir or a local file")
        result = subprocess.run(["git", "--git-dir", self.git_dir, "show", f"{self.commit}:{path}"],
                                capture_output=True, text=True, check=False)
        if result.returncode:
            raise SystemExit(f"git show {self.commit}:{path} failed: {result.stderr.strip()}")
        return result.stdout


# --- add_argument calls ---------------------------------------------------------------------------


def add_argument_calls(tree: ast.AST) -> list[ast.Call]:
    calls = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]
    return sorted(calls, key=lambda call: (call.lineno, call.col_offset))


def called_names(tree: ast.AST) -> set[str]:
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}


def function_def(module: ast.Module, name: str) -> ast.FunctionDef:
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise SystemExit(f"no function {name!r} in the source")


def module_constants(module: ast.Module) -> dict[str, Any]:
    """Module-level NAME = <literal> assignments (used to resolve choices=NAME)."""
    constants: dict[str, Any] = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                constants[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return constants


def describe_call(call: ast.Call, constants: dict[str, Any], origin: str, unresolved: list[str]) -> dict[str, Any]:
    names = [arg.value for arg in call.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
    kwargs = {kw.arg: kw.value for kw in call.keywords if kw.arg}
    action = _literal(kwargs.get("action"))
    if "action" in kwargs and not isinstance(action, str):
        action = ast.unparse(kwargs["action"])
    record: dict[str, Any] = {
        "names": names,
        "dest": _literal(kwargs.get("dest")),
        "action": action or "store",
        # argparse.BooleanOptionalAction: --flag / --no-flag, neither takes a value.
        "takes_value": action not in VALUELESS_ACTIONS and not str(action).endswith("BooleanOptionalAction"),
        "nargs": _literal(kwargs.get("nargs")),
        "required": bool(_literal(kwargs.get("required"))),
        "choices": None,
        "default": _default(kwargs.get("default")),
        "type": ast.unparse(kwargs["type"]) if "type" in kwargs else None,
        "origin": origin,
    }
    if "choices" in kwargs:
        choices = _resolve_choices(kwargs["choices"], constants)
        if choices is None:
            unresolved.append(f"{names[0]}: choices={ast.unparse(kwargs['choices'])} is computed at run time ({origin})")
        record["choices"] = choices
    if record["type"] and "(" in record["type"]:
        unresolved.append(f"{names[0]}: type={record['type']} validates values at run time ({origin})")
    return record


def _literal(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _default(node: ast.AST | None) -> Any:
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return {"expr": ast.unparse(node)}


def _resolve_choices(node: ast.AST, constants: dict[str, Any]) -> list[Any] | None:
    try:
        return list(ast.literal_eval(node))
    except ValueError:
        pass
    if isinstance(node, ast.Name) and isinstance(constants.get(node.id), (list, tuple)):
        return list(constants[node.id])
    return None


# --- trtllm-build's PluginConfig flags ------------------------------------------------------------


def plugin_flags(module: ast.Module, origin: str, unresolved: list[str]) -> list[dict[str, Any]]:
    constants = module_constants(module)
    cli_args = constants.get("cli_plugin_args")
    if not isinstance(cli_args, list):
        raise SystemExit(f"{origin}: no literal cli_plugin_args list")
    aliases = {node.targets[0].id: node.value for node in module.body
               if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    plugin_class = next((node for node in ast.walk(module) if isinstance(node, ast.ClassDef) and node.name == "PluginConfig"), None)
    if plugin_class is None:
        raise SystemExit(f"{origin}: no class PluginConfig")
    fields = {node.target.id: node for node in plugin_class.body
              if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    flags = []
    for name in cli_args:
        if name not in fields:
            unresolved.append(f"--{name}: listed in cli_plugin_args but no PluginConfig field ({origin})")
            continue
        choices = _annotation_choices(fields[name].annotation, aliases, constants)
        flags.append({
            "names": [f"--{name}"], "dest": None, "action": "store", "takes_value": True, "nargs": None,
            "required": False, "choices": choices, "default": _field_default(fields[name].value),
            "type": ast.unparse(fields[name].annotation), "origin": f"{origin} (PluginConfig.{name})",
        })
    return flags


def _annotation_choices(node: ast.AST, aliases: dict[str, ast.AST], constants: dict[str, Any]) -> list[Any] | None:
    if isinstance(node, ast.Name) and node.id in aliases:
        return _annotation_choices(aliases[node.id], aliases, constants)
    if isinstance(node, ast.Name) and node.id == "bool":
        return ["enable", "disable"]
    if isinstance(node, ast.Name) and node.id == "str" and isinstance(constants.get("plugin_options"), list):
        return list(constants["plugin_options"])
    if isinstance(node, ast.Subscript):
        head = ast.unparse(node.value)
        inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Literal":
            return ["disable" if _literal(item) is None else _literal(item) for item in inner]
        if head in ("Optional", "Union"):
            for item in inner:
                found = _annotation_choices(item, aliases, constants)
                if found is not None:
                    return found + (["disable"] if head == "Optional" and "disable" not in found else [])
    return None


def _field_default(node: ast.AST | None) -> Any:
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "Field":
        for kw in node.keywords:
            if kw.arg == "default":
                return _default(kw.value)
        return None
    return _default(node)


# --- main -----------------------------------------------------------------------------------------


def extract(args: argparse.Namespace) -> dict[str, Any]:
    local = dict(item.split("=", 1) for item in args.local or [])
    if args.source:
        local[args.path] = args.source
    reader = SourceReader(args.git_dir, args.commit, local)
    module = ast.parse(reader.read(args.path))
    scope: ast.AST = function_def(module, args.function) if args.function else module
    constants = module_constants(module)
    unresolved: list[str] = []
    records = [describe_call(call, constants, args.path, unresolved) for call in add_argument_calls(scope)]
    helpers_used = []
    for kind, specs in (("helper", args.helper or []), ("plugin", args.plugin_helper or [])):
        for spec in specs:
            name, path = spec.split("=", 1)
            if name not in called_names(scope):
                raise SystemExit(f"{args.path} does not call {name}(...); drop --{kind} {spec}")
            helper_module = ast.parse(reader.read(path))
            if kind == "helper":
                helper_scope = function_def(helper_module, name)
                records += [describe_call(call, module_constants(helper_module), f"{path}:{name}", unresolved)
                            for call in add_argument_calls(helper_scope)]
            else:
                records += plugin_flags(helper_module, f"{path}:{name}", unresolved)
            helpers_used.append({"function": name, "path": path})
    flags = [record for record in records if any(n.startswith("-") for n in record["names"])]
    positionals = [record for record in records if record not in flags]
    seen: dict[str, str] = {}
    for record in flags:
        for flag in record["names"]:
            if flag in seen:
                raise SystemExit(f"{flag} is defined twice ({seen[flag]} and {record['origin']})")
            seen[flag] = record["origin"]
    return {
        "schema_version": SCHEMA_VERSION,
        "release": args.release,
        "script": args.script,
        "repo": args.repo,
        "tag": args.tag,
        "commit": args.commit,
        "path": args.path,
        "exact": not args.source_note,
        "source": args.source_note or f"git show {args.commit}:{args.path}",
        "helpers": helpers_used,
        "flags": flags,
        "positionals": positionals,
        "unresolved": unresolved,
        "extracted_with": "tests/tools/extract_flags.py (ast; nothing upstream imported)",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--release", required=True)
    parser.add_argument("--script", required=True, help="flag-set key, e.g. build.py, trtllm-build")
    parser.add_argument("--repo", required=True)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--commit", required=True, help="the commit the release pins")
    parser.add_argument("--path", required=True, help="the script's path in the repository")
    parser.add_argument("--git-dir", help="a git repository holding --commit")
    parser.add_argument("--source", help="read --path from this local file instead of git")
    parser.add_argument("--local", action="append", help="REPO_PATH=LOCAL_FILE for a helper read from a file")
    parser.add_argument("--source-note", help="where a local source came from (marks the record inexact)")
    parser.add_argument("--function", help="only add_argument calls inside this function")
    parser.add_argument("--helper", action="append", help="NAME=PATH: follow NAME(parser) into PATH")
    parser.add_argument("--plugin-helper", action="append", help="NAME=PATH: PluginConfig-generated flags")
    parser.add_argument("--note", help="free text kept in the record")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    record = extract(args)
    if args.note:
        record["note"] = args.note
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1, sort_keys=False) + "\n")
    print(f"{out}: {len(record['flags'])} flags, {len(record['unresolved'])} unresolved", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
