"""The release probe against a synthetic next release served over real HTTP on 127.0.0.1.

v1.2.1 is served from 1.2.1's records and template copies; v1.3.0 starts as the same files and a
test changes what the next release changes: nothing (compatible), a removed flag, a new placeholder.
"""

from __future__ import annotations

import json

import pytest

from llm_deploy.backends.trtllm import commands, release_probe
from llm_deploy.backends.trtllm.flag_check import FlagSet, problems, script_of
from llm_deploy.backends.trtllm.releases import RELEASES, TRTLLM_BUILD, find
from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import DeploySpec, SpecError
from tests.support.release_feeds import Feeds
from tests.support.synthetic_upstream import SyntheticRelease

TENSORRT_LLM_CONFIG = "triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt"


@pytest.fixture
def feeds():
    f = Feeds()
    f.publish("v1.2.1", SyntheticRelease.from_recorded("1.2.1"))
    yield f
    f.close()


def probe(feeds, release="1.3.0", next_release=None, **kwargs):
    if next_release is not None:
        feeds.publish(f"v{release}", next_release)
    upstream = release_probe.Upstream(feeds.raw_files, feeds.commit_api)
    try:
        return release_probe.probe(release, upstream, **kwargs)
    finally:
        upstream.close()


def test_a_compatible_release_becomes_a_derived_row_on_the_volume(feeds, tmp_path):
    result = probe(feeds, next_release=SyntheticRelease.from_recorded("1.2.1"))
    report = result.report
    assert report.compatible and report.findings == []
    assert (report.derived_from, report.tag, report.commit) == ("1.2.1", "v1.3.0", Feeds.commit_of("v1.3.0"))
    assert not report.image_confirmed and "unconfirmed" in " ".join(report.notes)
    assert report.triton_base_tag == "26.03-py3"

    where = release_probe.write_derived(tmp_path, result)
    assert where == tmp_path / "releases" / "1.3.0"
    assert "derived from 1.2.1" in (where / "report.md").read_text()
    row = find("1.3.0", tmp_path)
    base = RELEASES["1.2.1"]
    assert (row.name, row.trtllm_tag, row.trtllm_commit, row.derived_from) == (
        "1.3.0", "v1.3.0", Feeds.commit_of("v1.3.0"), "1.2.1")
    assert (row.wheel.kind, row.wheel.version) == ("pip", "1.3.0")
    assert (row.scripts, row.flows, row.container_image, row.tuning_params) == (
        base.scripts, base.flows, base.container_image, base.tuning_params)
    assert find("1.3.0") is None, "without the volume, only the table"

    # The generated commands for the derived release pass the flag sets probed at its tag.
    for flow in row.flows:
        for world_size in (1, 2):
            spec = DeploySpec(backend="trtllm", trtllm_release="1.3.0", triton_flow=flow, world_size=world_size,
                              dtype="bfloat16", engines_root=str(tmp_path))
            argvs = [argv for step in commands.STEPS.values() for argv in step(spec, release_probe._PATHS)]
            checked = 0
            for argv in argvs:
                target = script_of(argv, row)
                if target:
                    record = json.loads((where / f"{target[0]}.json").read_text())
                    assert record["tag"] == "v1.3.0" and record["exact"]
                    assert problems(target[1], FlagSet(target[0], record)) == []
                    checked += 1
            assert checked  # engine flow: convert, build, run, launch; llmapi: launch
    # Its clone moves the TensorRT-LLM submodule to the new tag.
    clone = commands.clone_backend(spec, release_probe._PATHS)
    assert ["git", "-C", "/backend/tensorrt_llm", "checkout", "--quiet", "--detach", Feeds.commit_of("v1.3.0")] in clone


def test_the_spec_accepts_a_derived_release_only_on_its_volume(feeds, tmp_path):
    release_probe.write_derived(tmp_path, probe(feeds, next_release=SyntheticRelease.from_recorded("1.2.1")))
    assert DeploySpec(backend="trtllm", trtllm_release="1.3.0", engines_root=str(tmp_path)).trtllm_release == "1.3.0"
    with pytest.raises(SpecError, match=r"- trtllm_release: '1.3.0' is not in the release table, and "
                                        r"/elsewhere/releases holds no release of that name.*allowed: 0.5.0, .*1.2.1"):
        DeploySpec.from_params({"backend": "trtllm", "trtllm_release": "1.3.0", "engines_root": "/elsewhere"})


@pytest.mark.parametrize(("script", "flag"), [(TRTLLM_BUILD, "--max_seq_len"),
                                               ("launch_triton_server.py", "--world_size")])
def test_a_removed_flag_we_use_makes_it_incompatible_naming_flag_and_script(feeds, tmp_path, script, flag):
    next_release = SyntheticRelease.from_recorded("1.2.1")
    next_release.remove_flag(script, flag)
    result = probe(feeds, next_release=next_release)
    assert not result.report.compatible and result.row is None
    path = release_probe.script_sources(RELEASES["1.2.1"])[script].path
    assert f"{script} ({path}): {flag}: not a flag of {script}" in result.report.findings
    diff = next(d for d in result.report.scripts if d.script == script)
    assert flag in diff.removed and flag in diff.used  # trtllm-build loses its --max_decoder_seq_len alias too
    with pytest.raises(ValueError, match="not compatible"):
        release_probe.write_derived(tmp_path, result)
    release_probe.write_report(tmp_path, result.report)
    assert flag in (tmp_path / "release_probes" / "1.3.0" / "report.md").read_text()
    assert not (tmp_path / "releases").exists()


def test_a_removed_flag_we_do_not_use_is_only_listed(feeds):
    next_release = SyntheticRelease.from_recorded("1.2.1")
    next_release.remove_flag("run.py", "--num_beams")
    report = probe(feeds, next_release=next_release).report
    assert report.compatible
    assert next(d for d in report.scripts if d.script == "run.py").removed == ["--num_beams"]


def test_a_new_placeholder_our_filler_does_not_know_makes_it_incompatible(feeds):
    next_release = SyntheticRelease.from_recorded("1.2.1")
    next_release.add_placeholder(TENSORRT_LLM_CONFIG, "brand_new_knob")
    report = probe(feeds, next_release=next_release).report
    assert not report.compatible
    assert report.findings == ["inflight_batcher_llm/tensorrt_llm/config.pbtxt: placeholder ${brand_new_knob} "
                               "has no value in llm-deploy's filler (model_repo.fill_values)"]


def test_a_tuning_placeholder_that_vanished_is_noted_and_its_knob_withdrawn(feeds):
    next_release = SyntheticRelease.from_recorded("1.2.1")
    text = next_release.templates[TENSORRT_LLM_CONFIG]
    next_release.templates[TENSORRT_LLM_CONFIG] = text.replace("${enable_chunked_context}", "false")
    result = probe(feeds, next_release=next_release)
    assert result.report.compatible
    assert "enable_chunked_context" not in result.row.tuning_params
    assert any("${enable_chunked_context}, which we fill, is gone" in note for note in result.report.notes)


def test_a_moved_file_is_a_finding_not_a_crash(feeds):
    next_release = SyntheticRelease.from_recorded("1.2.1")
    files_without = next_release.files()
    del files_without["examples/utils.py"]
    feeds.tags["v1.3.0"] = files_without
    report = probe(feeds).report
    assert not report.compatible
    assert "file moved/removed: examples/utils.py (run.py)" in report.findings


def test_a_tag_upstream_does_not_have_is_a_finding(feeds):
    report = probe(feeds, release="7.7.7").report
    assert not report.compatible and report.findings[0] == "NVIDIA/TensorRT-LLM has no tag v7.7.7"


def test_an_unreachable_upstream_is_retryable():
    upstream = release_probe.Upstream("http://127.0.0.1:9/{ref}/{path}", "http://127.0.0.1:9/{ref}", timeout_s=2)
    with pytest.raises(StepError) as err:
        release_probe.probe("1.3.0", upstream)
    assert not isinstance(err.value, NonRetryableError)


def test_a_row_whose_scripts_live_in_the_backend_repository_cannot_be_probed():
    with pytest.raises(NonRetryableError, match="tensorrtllm_backend itself"):
        release_probe.script_sources(RELEASES["0.19.0"])


def test_the_flags_we_use_come_from_the_generated_commands():
    used = release_probe.used_flags(release_probe.our_commands(RELEASES["1.2.1"]), RELEASES["1.2.1"])
    assert set(used[TRTLLM_BUILD]) >= {"--max_seq_len", "--gemm_plugin", "--workers"}
    assert used[TRTLLM_BUILD]["--gemm_plugin"] == {"float16", "bfloat16", "float32"}
    assert {"--no-mpi", "--trtllm_llmapi_launch", "--world_size"} <= set(used["launch_triton_server.py"])


def test_a_broken_derived_record_is_refused_saying_what_to_do(tmp_path):
    from llm_deploy.backends.trtllm.validation import release_row

    (tmp_path / "releases" / "1.3.0").mkdir(parents=True)
    (tmp_path / "releases" / "1.3.0" / "release.json").write_text('{"kind": "llm-deploy derived trtllm release", "name": "1.3.0"}')
    with pytest.raises(NonRetryableError, match="missing keys .*re-derive it with the release watch or remove it"):
        release_row("1.3.0", tmp_path)
    with pytest.raises(NonRetryableError, match=r"allowed: 0.5.0, .*1.2.1, or a release watch_trtllm_releases derived"):
        release_row("1.4.0", tmp_path)
    assert find("../../etc", tmp_path) is None, "only a version names a directory on the volume"
