"""Probe a TensorRT-LLM release nobody added to the table: does our newest row still fit it?

For a candidate version X and the table's newest row N, the probe fetches over HTTP, at tag
``v{X}`` and at N's tag, each upstream file our commands and templates depend on (the scripts of
N's flows, the inflight_batcher_llm config.pbtxt of every model, and for llmapi rows the llmapi
config.pbtxt and model.yaml), reads their flags and placeholders with ``flag_extractor``, and
holds against X:

* the argv ``commands.py`` generates for N (defaults, every flow, every dtype, one and two GPUs):
  each flag must still exist with the same value-taking form, our values within its choices, and
  no new required flag (``flag_check.problems``, the tests' own check);
* every ``${placeholder}`` of X's templates must be one ``model_repo.fill_values`` fills (a
  placeholder we fill that vanished is only noted);
* the model.yaml keys of N's template that we overwrite must still be in X's.

Compatible -> a derived row: N under X's name, tag, commit and wheel, ``derived_from=N.name``.
Files come from a raw-files URL template (GitHub's raw host by default, a local server in tests)
and the tag's commit from a GitHub-API-shaped commit URL. A 404 is a finding (the file moved or
went), never a crash; a network error or a 5xx raises ProbeFetchError, which a retry may fix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from llm_deploy.backends.trtllm import commands, flag_extractor
from llm_deploy.backends.trtllm.flag_check import FlagSet, problems, script_of
from llm_deploy.backends.trtllm.layout import TRTLLM_SUBMODULE, TrtllmPaths
from llm_deploy.backends.trtllm.llm_args import llm_args, triton_config
from llm_deploy.backends.trtllm.model_repo import fill_values
from llm_deploy.backends.trtllm.releases import (
    CONVERT_CHECKPOINT,
    LAUNCH_SERVER,
    RELEASE_FILE,
    RELEASES,
    RUN,
    SUPPORTED,
    TRTLLM_BUILD,
    Release,
    WheelSource,
    derived_dir,
    release_to_json,
)
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.release_watch import DEFAULT_TRTLLM_COMMIT_API, DEFAULT_TRTLLM_RAW_FILES
from llm_deploy.spec import DeploySpec

# As the watch's feeds, LLM_DEPLOY_TRTLLM_RAW_URL / LLM_DEPLOY_TRTLLM_COMMIT_URL point these at a
# mirror (or a test's local server).
DEFAULT_RAW_FILES = DEFAULT_TRTLLM_RAW_FILES
DEFAULT_COMMIT_API = DEFAULT_TRTLLM_COMMIT_API
REPO = "NVIDIA/TensorRT-LLM"
PROBES_DIR = "release_probes"  # every probe's report, compatible or not: <root>/release_probes/<X>/
INFLIGHT_MODELS = ("ensemble", "preprocessing", "postprocessing", "tensorrt_llm", "tensorrt_llm_bls")
LLMAPI_FILES = ("tensorrt_llm/config.pbtxt", "tensorrt_llm/1/model.yaml")
DOCKERFILE = "docker/Dockerfile.multi"
_TRITON_BASE_TAG = re.compile(r"^ARG TRITON_BASE_TAG=\"?([^\s\"]+)", re.MULTILINE)
_SHA = re.compile(r"^[0-9a-f]{40}$")


class ProbeFetchError(StepError):
    """Upstream could not be asked (network, 5xx, rate limit): retry later."""


@dataclass(frozen=True)
class ScriptSource:
    """How one script's flags are read: its path in NVIDIA/TensorRT-LLM, the function holding its
    parser, and the helpers that function calls (see flag_extractor)."""

    path: str
    function: str | None = "parse_arguments"
    helpers: dict[str, str] = field(default_factory=dict)
    plugin_helpers: dict[str, str] = field(default_factory=dict)


def script_sources(row: Release) -> dict[str, ScriptSource]:
    """The scripts our commands call for row, as paths in NVIDIA/TensorRT-LLM."""
    sources = {}
    for key in row.flag_sets:
        if key == TRTLLM_BUILD:
            sources[key] = ScriptSource("tensorrt_llm/commands/build.py",
                                        plugin_helpers={"add_plugin_argument": "tensorrt_llm/plugin/plugin.py"})
        elif key == RUN:
            sources[key] = ScriptSource(row.scripts[key], helpers={"add_common_args": "examples/utils.py"})
        elif key == LAUNCH_SERVER:
            sources[key] = ScriptSource(_in_trtllm(row, row.scripts[key]))
        elif key == CONVERT_CHECKPOINT:
            sources[key] = ScriptSource(row.scripts[key])
        else:
            raise NonRetryableError(f"release {row.name} calls {key}, which the probe cannot read; "
                                    "probe from a row of 0.20.0 or later")
    return sources


def template_paths(row: Release) -> dict[str, str]:
    """Template files, keyed by their place in our model repositories -> path in TensorRT-LLM."""
    paths = {f"inflight_batcher_llm/{model}/config.pbtxt": f"{_in_trtllm(row, row.templates)}/{model}/config.pbtxt"
             for model in INFLIGHT_MODELS}
    if "llmapi" in row.flows:
        paths |= {f"llmapi/{name}": f"{_in_trtllm(row, row.llmapi_templates)}/{name}" for name in LLMAPI_FILES}
    return paths


def _in_trtllm(row: Release, backend_path: str) -> str:
    prefix = TRTLLM_SUBMODULE + "/"
    if not backend_path.startswith(prefix):
        raise NonRetryableError(f"release {row.name} keeps {backend_path} in tensorrtllm_backend itself; the probe "
                                "reads NVIDIA/TensorRT-LLM only (releases from 0.20.0, whose Triton backend is its own)")
    return backend_path.removeprefix(prefix)


# --- fetching -------------------------------------------------------------------------------------


class Upstream:
    """NVIDIA/TensorRT-LLM's files at a ref, and a ref's commit, over HTTP(S)."""

    def __init__(self, raw_files: str = DEFAULT_RAW_FILES, commit_api: str = DEFAULT_COMMIT_API,
                 timeout_s: float = 30):
        self.raw_files, self.commit_api = raw_files, commit_api
        self.client = httpx.Client(timeout=timeout_s, follow_redirects=True)

    def text(self, ref: str, path: str) -> str | None:
        """The file's text, or None when upstream has no such file at ref (404)."""
        url = self.raw_files.format(ref=ref, path=path)
        response = self._get(url)
        return None if response is None else response.text

    def commit(self, ref: str) -> str | None:
        """The commit ref names, or None when upstream has no such ref."""
        url = self.commit_api.format(ref=ref)
        response = self._get(url, headers={"Accept": "application/vnd.github+json"}, missing=(404, 422))
        if response is None:
            return None
        try:
            sha = str(response.json()["sha"])
        except (ValueError, KeyError, TypeError):
            raise ProbeFetchError(f"{url} answered without a commit sha: {response.text[:200]!r}") from None
        if not _SHA.match(sha):
            raise ProbeFetchError(f"{url} answered {sha!r}, not a commit id")
        return sha

    def _get(self, url: str, *, headers: dict[str, str] | None = None,
             missing: tuple[int, ...] = (404,)) -> httpx.Response | None:
        try:
            response = self.client.get(url, headers=headers)
        except httpx.HTTPError as exc:
            raise ProbeFetchError(f"cannot fetch {url}: {exc}") from exc
        if response.status_code in missing:
            return None
        if response.status_code != 200:
            raise ProbeFetchError(f"{url} answered HTTP {response.status_code}; retry later")
        return response

    def close(self) -> None:
        self.client.close()


@dataclass
class Snapshot:
    """What one ref of upstream says: flag sets, template texts, and what could not be read."""

    ref: str
    commit: str | None
    flag_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    templates: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # "file moved/removed: <path>"
    unreadable: list[str] = field(default_factory=list)
    triton_base_tag: str | None = None


def snapshot(upstream: Upstream, ref: str, row: Release, release_name: str) -> Snapshot:
    """Fetch and read, at ref, every file row's commands and templates depend on."""
    snap = Snapshot(ref=ref, commit=upstream.commit(ref))
    for script, source in script_sources(row).items():
        texts = {path: upstream.text(ref, path)
                 for path in (source.path, *source.helpers.values(), *source.plugin_helpers.values())}
        gone = [path for path, text in texts.items() if text is None]
        if gone:
            snap.missing += [f"file moved/removed: {path} ({script})" for path in gone]
            continue
        try:
            found = flag_extractor.extract_flags(
                texts[source.path], origin=source.path, function=source.function,
                helpers={name: (path, texts[path]) for name, path in source.helpers.items()},
                plugin_helpers={name: (path, texts[path]) for name, path in source.plugin_helpers.items()})
        except flag_extractor.FlagExtractError as exc:
            snap.unreadable.append(f"{script}: cannot read its flags: {exc}")
            continue
        snap.flag_sets[script] = {
            "schema_version": 1, "release": release_name, "script": script, "repo": REPO, "tag": ref,
            "commit": snap.commit, "path": source.path, "exact": True,
            "source": upstream.raw_files.format(ref=ref, path=source.path), **found,
            "extracted_with": "llm_deploy.backends.trtllm.flag_extractor (ast; nothing upstream imported)",
        }
    for key, path in template_paths(row).items():
        text = upstream.text(ref, path)
        if text is None:
            snap.missing.append(f"file moved/removed: {path}")
        else:
            snap.templates[key] = text
    dockerfile = upstream.text(ref, DOCKERFILE)
    match = _TRITON_BASE_TAG.search(dockerfile or "")
    snap.triton_base_tag = match.group(1) if match else None
    return snap


# --- what our commands and templates use ------------------------------------------------------------

_PATHS = TrtllmPaths(backend_dir="/backend", hf_checkpoint_dir="/hf", engine_dir="/engine",
                     model_repo_dir="/repo", converted_checkpoint_dir="/converted", wheel_dir="/wheels")


def representative_specs(row: Release) -> list[DeploySpec]:
    """Specs whose commands reach every flag we pass for row: each flow, dtype, one and two GPUs."""
    return [DeploySpec(backend="trtllm", trtllm_release=row.name, triton_flow=flow, dtype=dtype,
                       world_size=world_size, engines_root="/engines")
            for flow in row.flows for dtype in row.dtypes for world_size in (1, 2)]


def our_commands(row: Release) -> list[list[str]]:
    """Every argv commands.py generates for the representative specs, each once."""
    argvs: dict[tuple[str, ...], None] = {}
    for spec in representative_specs(row):
        for step in commands.STEPS.values():
            for argv in step(spec, _PATHS):
                argvs[tuple(argv)] = None
    return [list(argv) for argv in argvs]


def used_flags(argvs: list[list[str]], row: Release) -> dict[str, dict[str, set[str]]]:
    """script -> flag -> the values we pass it (our argv never has a value that starts with "-")."""
    used: dict[str, dict[str, set[str]]] = {}
    for argv in argvs:
        target = script_of(argv, row)
        if target is None:
            continue
        script, args = target
        flag = None
        for token in args:
            if token.startswith("-"):
                flag = token.partition("=")[0]
                used.setdefault(script, {}).setdefault(flag, set())
            elif flag is not None:
                used[script][flag].add(token)
    return used


def filled_placeholders() -> set[str]:
    return set(fill_values(DeploySpec(backend="trtllm"), engine_dir="/engine", tokenizer_dir="/hf"))


def written_model_yaml_keys(row: Release) -> dict[str, set[str]]:
    """Top-level model.yaml keys we write, and triton_config's."""
    keys: set[str] = {"triton_config"}
    for spec in representative_specs(row):
        if spec.triton_flow == "llmapi":
            keys |= set(llm_args(spec, "/hf"))
    return {"": keys, "triton_config": set(triton_config(DeploySpec(backend="trtllm")))}


# --- the report -------------------------------------------------------------------------------------


@dataclass
class ScriptDiff:
    script: str
    path: str
    added: list[str]
    removed: list[str]
    used: list[str]  # the flags our commands pass
    problems: list[str]  # what X's script would reject in our argv (these matter)


@dataclass
class TemplateDiff:
    file: str
    added: list[str]
    removed: list[str]
    unknown: list[str]  # placeholders our filler has no value for (these matter)
    vanished_filled: list[str]  # placeholders we fill that X dropped (noted only)


@dataclass
class ProbeReport:
    release: str
    derived_from: str
    tag: str
    commit: str | None
    compatible: bool
    findings: list[str]  # every reason it is not compatible; empty when it is
    notes: list[str]
    scripts: list[ScriptDiff]
    templates: list[TemplateDiff]
    container_image: str
    image_confirmed: bool
    triton_base_tag: str | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_markdown(self) -> str:
        verdict = (f"compatible: derived from {self.derived_from}" if self.compatible
                   else f"NOT compatible with {self.derived_from}'s commands; nothing derived, nothing triggered")
        lines = [f"# TensorRT-LLM {self.release} probe", "",
                 f"{REPO} {self.tag} @ {self.commit or 'unknown'}; {verdict}.", ""]
        if self.findings:
            lines += ["## What changed that our commands or templates use", ""]
            lines += [f"- {finding}" for finding in self.findings] + [""]
        lines += ["## Flags (added / removed against " + self.derived_from + ")", "",
                  "| script | path | added | removed | used by us |", "|---|---|---|---|---|"]
        lines += [f"| {d.script} | `{d.path}` | {' '.join(d.added) or '-'} | {' '.join(d.removed) or '-'} | "
                  f"{len(d.used)} |" for d in self.scripts]
        lines += ["", "## Placeholders (added / removed)", "", "| file | added | removed |", "|---|---|---|"]
        lines += [f"| {d.file} | {' '.join(d.added) or '-'} | {' '.join(d.removed) or '-'} |" for d in self.templates]
        lines += ["", "## Notes", ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


@dataclass
class ProbeResult:
    report: ProbeReport
    flag_sets: dict[str, dict[str, Any]]
    row: Release | None  # the derived row, when compatible


def probe(candidate: str, upstream: Upstream, *, base: Release | None = None,
          container_image: str = "") -> ProbeResult:
    """Hold release ``candidate`` (a version, e.g. 1.3.0) against base (default: the table's newest row)."""
    base = base or RELEASES[SUPPORTED[-1]]
    tag = f"v{candidate}"
    new = snapshot(upstream, tag, base, candidate)
    old = snapshot(upstream, base.trtllm_tag, base, base.name)
    findings: list[str] = []
    notes: list[str] = []
    if new.commit is None:
        findings.append(f"{REPO} has no tag {tag}")
    findings += new.missing + new.unreadable
    if old.missing or old.unreadable:
        notes += [f"reference {base.trtllm_tag}: {item} (no diff against it there)" for item in old.missing + old.unreadable]

    scripts = _script_diffs(base, new, old, findings)
    templates, tuning = _template_diffs(base, new, old, findings, notes)
    if "llmapi" in base.flows:
        _check_model_yaml(base, new, old, findings)
        notes.append("the LLM() arguments model.yaml passes are not probed (no script to read them from): "
                     "verify_engine's LLM API check runs them before anything is served")

    image, confirmed = container_image or base.container_image, False
    notes.append(f"container image {image} is unconfirmed: " + (
        "given as the watch's container_image param" if container_image else f"{base.name}'s image, reused") +
        ". TensorRT-LLM's " + DOCKERFILE + (f" at {tag} builds on tritonserver:{new.triton_base_tag}"
                                            if new.triton_base_tag else f" at {tag} names no TRITON_BASE_TAG") +
        ", which is not the NGC tritonserver:<yy.mm>-trtllm-python-py3 release that ships it (Triton's "
        "compatibility matrix says which); set the row's image when promoting it")
    notes.append(f"the backend clone stays tensorrtllm_backend {base.backend_ref} @ {base.backend_commit[:8]} "
                 f"({base.name}'s); its clone step moves the {TRTLLM_SUBMODULE} submodule to {tag}")
    compatible = not findings
    row = None
    if compatible:
        row = dataclasses.replace(base, name=candidate, trtllm_tag=tag, trtllm_commit=new.commit,
                                  wheel=WheelSource(kind="pip", version=candidate), container_image=image,
                                  tuning_params=tuning, derived_from=base.name)
    report = ProbeReport(release=candidate, derived_from=base.name, tag=tag, commit=new.commit,
                         compatible=compatible, findings=findings, notes=notes, scripts=scripts,
                         templates=templates, container_image=image, image_confirmed=confirmed,
                         triton_base_tag=new.triton_base_tag)
    return ProbeResult(report=report, flag_sets=new.flag_sets, row=row)


def _script_diffs(base: Release, new: Snapshot, old: Snapshot, findings: list[str]) -> list[ScriptDiff]:
    argvs = our_commands(base)
    used = used_flags(argvs, base)
    diffs = []
    for script, source in script_sources(base).items():
        record = new.flag_sets.get(script)
        if record is None:
            continue  # already a finding: moved, removed or unreadable
        names = {name for flag in record["flags"] for name in flag["names"]}
        old_record = old.flag_sets.get(script)
        old_names = {name for flag in old_record["flags"] for name in flag["names"]} if old_record else names
        found: list[str] = []
        for argv in argvs:
            target = script_of(argv, base)
            if target and target[0] == script:
                found += [p for p in problems(target[1], FlagSet(script, record)) if p not in found]
        if old_record:
            before, after = FlagSet(script, old_record).by_name, FlagSet(script, record).by_name
            for flag in sorted(used.get(script, {})):
                if flag in before and flag in after and _form(before[flag]) != _form(after[flag]):
                    found.append(f"{flag}: changed form, {_form(before[flag])} -> {_form(after[flag])}")
        findings += [f"{script} ({source.path}): {p}" for p in found]
        diffs.append(ScriptDiff(script=script, path=source.path, added=sorted(names - old_names),
                                removed=sorted(old_names - names), used=sorted(used.get(script, {})), problems=found))
    return diffs


def _form(flag: dict[str, Any]) -> str:
    return f"takes_value={flag['takes_value']} nargs={flag['nargs']!r}"


def _template_diffs(base: Release, new: Snapshot, old: Snapshot, findings: list[str],
                    notes: list[str]) -> tuple[list[TemplateDiff], frozenset[str]]:
    known = filled_placeholders()
    diffs = []
    for key, text in new.templates.items():
        if key.endswith(".yaml"):
            continue
        found = flag_extractor.placeholders(text)
        before = flag_extractor.placeholders(old.templates[key]) if key in old.templates else found
        # The llmapi config.pbtxt is filled with no values at all: any placeholder there is unknown.
        fillable = set() if key.startswith("llmapi/") else known
        unknown = [name for name in found if name not in fillable]
        vanished = sorted((set(before) - set(found)) & fillable)
        findings += [f"{key}: placeholder ${{{name}}} has no value in llm-deploy's filler (model_repo.fill_values)"
                     for name in unknown]
        notes += [f"{key}: ${{{name}}}, which we fill, is gone (nothing to fill)" for name in vanished]
        diffs.append(TemplateDiff(file=key, added=sorted(set(found) - set(before)), removed=sorted(set(before) - set(found)),
                                  unknown=unknown, vanished_filled=vanished))
    # A spec knob is offered only where X's tensorrt_llm template still has its placeholder.
    trtllm_config = new.templates.get("inflight_batcher_llm/tensorrt_llm/config.pbtxt", "")
    tuning = frozenset(base.tuning_params & set(flag_extractor.placeholders(trtllm_config)))
    notes += [f"spec knob {param} is not offered for this release: its placeholder is gone"
              for param in sorted(base.tuning_params - tuning)]
    return diffs, tuning


def _check_model_yaml(base: Release, new: Snapshot, old: Snapshot, findings: list[str]) -> None:
    key = "llmapi/" + LLMAPI_FILES[1]
    if key not in new.templates:
        return  # already a finding
    after, before = _yaml(new.templates[key], key, findings), _yaml(old.templates.get(key), key, [])
    if after is None:
        return
    written = written_model_yaml_keys(base)
    if "triton_config" not in after or not isinstance(after.get("triton_config"), dict):
        findings.append(f"{key}: no triton_config block (llmapi_repo.write_model_yaml needs it)")
        return
    for section, keys in written.items():
        was = (before or {}) if section == "" else ((before or {}).get(section) or {})
        now = after if section == "" else after[section]
        for name in sorted(keys & set(was) - set(now)):
            findings.append(f"{key}: key {section + '.' if section else ''}{name}, which we write, is gone")


def _yaml(text: str | None, key: str, findings: list[str]) -> dict | None:
    if text is None:
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        findings.append(f"{key}: not valid YAML: {exc}")
        return None
    if not isinstance(data, dict):
        findings.append(f"{key}: not a mapping of keys")
        return None
    return data


# --- on the engines volume ----------------------------------------------------------------------------


def write_report(root: str | os.PathLike, report: ProbeReport) -> Path:
    """<root>/release_probes/<X>/report.{json,md}, for every probe."""
    return _publish(Path(root) / PROBES_DIR / report.release, {
        "report.json": json.dumps(report.to_json(), indent=1) + "\n", "report.md": report.to_markdown()})


def write_derived(root: str | os.PathLike, result: ProbeResult) -> Path:
    """<root>/releases/<X>/: release.json (what releases.find reads), the probed flag sets, the report."""
    if result.row is None:
        raise ValueError(f"release {result.report.release} is not compatible; there is no row to write")
    files = {RELEASE_FILE: json.dumps(release_to_json(result.row), indent=1) + "\n",
             "report.json": json.dumps(result.report.to_json(), indent=1) + "\n",
             "report.md": result.report.to_markdown()}
    files |= {f"{script}.json": json.dumps(record, indent=1) + "\n" for script, record in result.flag_sets.items()}
    return _publish(derived_dir(root, result.row.name), files)


def _publish(final: Path, files: dict[str, str]) -> Path:
    """Write a directory whole, then rename it into place: a reader sees the old one or the new one."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    for name, text in files.items():
        (scratch / name).write_text(text)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(scratch, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
