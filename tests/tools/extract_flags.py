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

The reading itself is ``llm_deploy.backends.trtllm.flag_extractor`` (pure functions of source
text, which the release watch's probe uses too); this CLI reads the files and writes the record.

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
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from llm_deploy.backends.trtllm.flag_extractor import FlagExtractError, extract_flags

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


def extract(args: argparse.Namespace) -> dict[str, Any]:
    local = dict(item.split("=", 1) for item in args.local or [])
    if args.source:
        local[args.path] = args.source
    reader = SourceReader(args.git_dir, args.commit, local)

    def sources(specs: list[str] | None) -> dict[str, tuple[str, str]]:
        pairs = [spec.split("=", 1) for spec in specs or []]
        return {name: (path, reader.read(path)) for name, path in pairs}

    try:
        found = extract_flags(reader.read(args.path), origin=args.path, function=args.function,
                              helpers=sources(args.helper), plugin_helpers=sources(args.plugin_helper))
    except FlagExtractError as exc:
        raise SystemExit(str(exc)) from None
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
        **found,
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
