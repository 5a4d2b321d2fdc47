"""The command-line flags and template placeholders of upstream's files, read from their text.

Nothing upstream is imported or run: a script's ``add_argument`` calls are read as syntax with
``ast``, a config.pbtxt's ``${name}`` placeholders with the pattern the model-repository filler
substitutes. Pure functions of source text, so the same code records a release's flag sets in
the tests (``tests/tools/extract_flags.py``) and probes a new release's files in the release watch.

Where flags come from:

* every ``<anything>.add_argument(...)`` call in the source (or in one function of it), argument
  groups included;
* ``helpers``: when the scope calls ``NAME(parser)`` (run.py's ``add_common_args`` from
  examples/utils.py), the ``add_argument`` calls inside ``def NAME`` of that helper's source;
* ``plugin_helpers``: trtllm-build's ``add_plugin_argument`` builds one flag per field of
  ``PluginConfig`` listed in ``cli_plugin_args`` at run time; those flags are derived from the
  class's annotations: ``Literal[...]`` -> its values as choices (``None`` spelled "disable"),
  ``bool`` -> enable/disable, ``str`` -> the module's ``plugin_options``, anything else takes a value.

What cannot be read statically (choices computed at run time, a ``type=`` function that validates
values) is listed under ``unresolved`` and the flag's ``choices`` left None, so a checker knows the
value was not constrained by the recording.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from typing import Any

VALUELESS_ACTIONS = {"store_true", "store_false", "store_const", "append_const", "count", "help", "version"}
# ${name}: the only placeholder form of upstream's templates (and of model_repo's filler).
PLACEHOLDER = re.compile(r"\$\{([_a-zA-Z][_a-zA-Z0-9]*)\}")


class FlagExtractError(ValueError):
    """The source does not have the shape the extraction was asked to read (a function, a helper
    call, a PluginConfig): the file changed too much to be read as before."""


def extract_flags(
    source: str,
    *,
    origin: str,
    function: str | None = None,
    helpers: Mapping[str, tuple[str, str]] | None = None,
    plugin_helpers: Mapping[str, tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """``{helpers, flags, positionals, unresolved}`` of one script.

    ``origin`` names the script (its path) in each record; ``helpers`` and ``plugin_helpers`` map a
    function the script calls to ``(path, source)`` of the module that defines it.
    """
    module = _parse(source, origin)
    scope: ast.AST = function_def(module, function, origin) if function else module
    unresolved: list[str] = []
    records = [describe_call(call, module_constants(module), origin, unresolved) for call in add_argument_calls(scope)]
    helpers_used = []
    for kind, specs in (("helper", helpers or {}), ("plugin", plugin_helpers or {})):
        for name, (path, helper_source) in specs.items():
            if name not in called_names(scope):
                raise FlagExtractError(f"{origin} does not call {name}(...) (its {kind} in {path})")
            helper_module = _parse(helper_source, path)
            if kind == "helper":
                helper_scope = function_def(helper_module, name, path)
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
                raise FlagExtractError(f"{flag} is defined twice ({seen[flag]} and {record['origin']})")
            seen[flag] = record["origin"]
    return {"helpers": helpers_used, "flags": flags, "positionals": positionals, "unresolved": unresolved}


def placeholders(text: str) -> list[str]:
    """The ``${name}`` placeholders of a template, each once, in order of first use."""
    return list(dict.fromkeys(PLACEHOLDER.findall(text)))


# --- add_argument calls ---------------------------------------------------------------------------


def _parse(source: str, origin: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise FlagExtractError(f"{origin} is not Python source: {exc}") from None


def add_argument_calls(tree: ast.AST) -> list[ast.Call]:
    calls = [node for node in ast.walk(tree)
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"]
    return sorted(calls, key=lambda call: (call.lineno, call.col_offset))


def called_names(tree: ast.AST) -> set[str]:
    return {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}


def function_def(module: ast.Module, name: str, origin: str = "the source") -> ast.FunctionDef:
    for node in ast.walk(module):
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise FlagExtractError(f"no function {name!r} in {origin}")


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
        raise FlagExtractError(f"{origin}: no literal cli_plugin_args list")
    aliases = {node.targets[0].id: node.value for node in module.body
               if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)}
    plugin_class = next((node for node in ast.walk(module) if isinstance(node, ast.ClassDef) and node.name == "PluginConfig"), None)
    if plugin_class is None:
        raise FlagExtractError(f"{origin}: no class PluginConfig")
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
