"""Every DAG's trigger form, and the LLM deployments view the runs fill, in a real browser against a
real api-server, scheduler and dag-processor.

What a person does in the Airflow UI: sign in, press Trigger on a DAG, look at the form, change a
few fields, press the form's Trigger, and watch the run. For each DAG the form must open with no
section in error and its Trigger button enabled, every param shown with its description; a bad
value must not start a run; a valid trigger from the form must start a run that succeeds.

The runs started from the forms are then followed where a person goes next: the benchmark
task's "Benchmark report" link to its page in the view (its levels, plots, baseline, verdict),
the view's own entry in the UI's navigation (deployments and engines), and compare_configs'
"Config comparison" link. Screenshots of each form section, each run's page and each page of the
view go to .cache/test-output/trigger_forms/ (their paths are printed). The forms are Airflow 3.3's: it flags an empty required field at once
and keeps Trigger disabled, brings a number outside its minimum/maximum back into range when the
field is left, and checks a pattern when Trigger is pressed, refusing the run with the param named.
"""

from __future__ import annotations

import http.client
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from llm_deploy import release_watch as rw
from llm_deploy.airflow.params import param_schemas
from llm_deploy.spec import DeploySpec
from tests.support.airflow_stack import ADMIN
from tests.deployment.conftest import engines_volume, running_stack
from tests.support.airflow_ui import AirflowUI, BrowserUnavailable, find_or_install_chromium
from tests.test_release_watch import Feeds

# slow: the runs started from the forms serve the real SmolLM2 model.
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / ".cache" / "test-output" / "trigger_forms"
DAG_IDS = ("deploy_llm", "build_llm_engines", "benchmark_llm_engines", "watch_trtllm_releases",
           "rollback_llm_deployment", "stop_llm_deployment")
# What a person would change in the form for a short run on a 2-core CPU (each a number field).
SHORT_RUN = {"benchmark_requests": "4", "benchmark_duration_s": "5", "benchmark_warmup_requests": "1",
             "benchmark_max_tokens": "16"}


@pytest.fixture(scope="module")
def feeds():
    """Local stand-ins for PyPI and GitHub, at the release the suite's volume has deployed: the
    release watch's own daily run (it starts once the form unpauses it) reads them and finds
    nothing new, so no run of this module reaches beyond 127.0.0.1."""
    served = Feeds()
    yield served
    served.server.shutdown()


@pytest.fixture(scope="module")
def airflow_stack(tmp_path_factory, feeds):
    engines = engines_volume(tmp_path_factory)
    rw.record_deployed(engines, feeds.backend.lstrip("v"))
    yield from running_stack(tmp_path_factory, engines, LLM_DEPLOY_PYPI_JSON_URL=feeds.pypi,
                             LLM_DEPLOY_BACKEND_RELEASES_URL=feeds.releases)


@pytest.fixture(scope="module")
def stack(airflow_stack):
    for dag_id in DAG_IDS:
        airflow_stack.wait_for_dag(dag_id)
    return airflow_stack


@pytest.fixture(scope="module")
def browser(stack):  # closed before the stack, whose teardown requires that nothing it saw is left
    from playwright.sync_api import sync_playwright

    try:
        chromium = find_or_install_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox",
            # Only the stack on 127.0.0.1: any other host name fails to resolve, so nothing the
            # browser does in the background (Playwright already turns most of it off) leaves.
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        ])
        yield launched
        launched.close()


@pytest.fixture
def ui(browser, stack, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(30_000)
    ui = AirflowUI(page, stack.api_url, SHOTS / request.node.name.replace("[", "-").rstrip("]"))
    ui.sign_in(ADMIN, stack.admin_password)
    yield ui
    context.close()


def run_ids(stack, dag_id: str) -> set[str]:
    return {run["dag_run_id"] for run in stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]}


def new_run(stack, dag_id: str, before: set[str], run_type: str = "manual", timeout_s: float = 30) -> dict:
    """The run that appeared since ``before``: a manual one is the form's (unpausing a scheduled
    DAG also lets its scheduler start the latest interval's run)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = stack.api("GET", f"/api/v2/dags/{dag_id}/dagRuns")["dag_runs"]
        fresh = [run for run in runs if run["dag_run_id"] not in before and run["run_type"] == run_type]
        if fresh:
            return fresh[0]
        time.sleep(0.5)
    raise AssertionError(f"no new run of {dag_id} within {timeout_s:.0f}s of pressing Trigger")


def assert_succeeded(stack, ui, dag_id: str, run_id: str, timeout_s: float = 600) -> None:
    run = stack.wait_for_run(dag_id, run_id, timeout_s=timeout_s)
    badge = ui.run_page(dag_id, run_id)
    ui.page.get_by_test_id(f"grid-{run_id}-{stack.task_instances(dag_id, run_id)[0]['task_id']}").wait_for()
    ui.screenshot(f"{dag_id}-run")
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances(dag_id, run_id)}
    assert run["state"] == "success", states
    assert badge.inner_text().strip().lower() == "success"


def fill_short_run(form, ports: dict[str, int], deployment_ports: dict[str, int] | None = None, *,
                   hf_baseline: bool = False) -> None:
    form.open_section("Server")
    for name, port in ports.items():
        assert form.type_into(name, str(port)) == str(port)
    if deployment_ports:
        form.open_section("Deployment")
        for name, port in deployment_ports.items():
            assert form.type_into(f"deployment_{name}", str(port)) == str(port)
    form.open_section("Benchmark")
    for name, value in SHORT_RUN.items():
        assert form.type_into(name, value) == value
    form.set_checkbox("benchmark_hf_baseline", hf_baseline)


@pytest.mark.parametrize("dag_id", DAG_IDS)
def test_the_form_opens_ready_to_trigger_and_describes_every_param(ui, stack, dag_id):
    form = ui.trigger_form(dag_id)
    ui.screenshot(f"{dag_id}-form")

    assert form.sections_in_error() == []
    assert form.fields_in_error() == {}
    assert form.trigger_button.is_enabled()
    params = stack.api("GET", f"/api/v2/dags/{dag_id}/details")["params"]
    shown: dict[str, str] = {}
    for section in form.section_names():
        if section == "Advanced Options":
            continue
        form.open_section(section)
        ui.screenshot(f"{dag_id}-{section.lower().replace(' ', '-')}")
        shown.update(form.shown_descriptions())
    for name, param in params.items():
        assert shown.get(name) == param["description"], f"{dag_id}: {name} shows {shown.get(name)!r}"


def test_a_number_outside_its_range_is_brought_back_into_it(ui):
    form = ui.trigger_form("deploy_llm")
    form.open_section("Engine")
    assert form.type_into("world_size", "0") == "1"
    form.open_section("Server")
    assert form.type_into("http_port", "80") == "1024"
    assert form.trigger_button.is_enabled()


def test_a_model_id_that_is_not_a_repo_id_is_refused_and_starts_nothing(ui, stack):
    before = run_ids(stack, "deploy_llm")
    form = ui.trigger_form("deploy_llm")
    form.open_section("Model")
    form.type_into("model_id", "org/model;rm -rf /")

    form.submit()

    alert = form.alert_text()
    ui.screenshot("deploy_llm-refused")
    assert "Invalid input for param model_id" in alert and schema_pattern("model_id") in alert
    assert form.dialog.is_visible()  # still open, for the value to be corrected
    assert run_ids(stack, "deploy_llm") == before


def test_an_emptied_required_field_is_flagged_and_keeps_trigger_disabled(ui):
    form = ui.trigger_form("deploy_llm")
    form.open_section("Model")
    form.field("model_id").fill("")

    assert form.fields_in_error() == {"model_id": "This field is required"}
    assert form.sections_in_error() == ["Model"]
    assert not form.trigger_button.is_enabled()
    ui.screenshot("deploy_llm-required")
    form.field("model_id").fill(param_schemas()["model_id"]["default"])
    assert form.trigger_button.is_enabled()


def test_deploy_llm_triggered_from_its_form_leaves_a_deployment_that_its_stop_form_ends(
        ui, stack, free_ports, free_ports_factory):
    live = free_ports_factory()
    before = run_ids(stack, "deploy_llm")
    form = ui.trigger_form("deploy_llm")
    fill_short_run(form, free_ports, live, hf_baseline=True)  # for the report page to show it

    form.submit()

    run = new_run(stack, "deploy_llm", before)
    assert run["conf"]["benchmark_requests"] == 4 and run["conf"]["http_port"] == free_ports["http_port"]
    assert run["conf"]["docker_image"] is None  # left empty: the image is chosen at run time
    try:
        assert_succeeded(stack, ui, "deploy_llm", run["dag_run_id"])
        with urllib.request.urlopen(f"http://127.0.0.1:{live['http_port']}/v2/health/ready") as ready:
            assert ready.status == 200  # the run is over; its deployment serves on
        check_the_benchmark_report_page(ui, run)
        check_the_deployments_view(ui, stack, run)
    finally:
        stops = run_ids(stack, "stop_llm_deployment")
        ui.trigger_form("stop_llm_deployment").submit()  # its defaults name the run's deployment
        stop = new_run(stack, "stop_llm_deployment", stops)
        assert_succeeded(stack, ui, "stop_llm_deployment", stop["dag_run_id"], timeout_s=180)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{live['http_port']}/v2/health/ready", timeout=5)


def test_the_release_watch_triggered_from_its_form_reads_the_feeds_it_is_given(ui, stack, feeds, tmp_path):
    rw.record_deployed(tmp_path, "0.5.0")  # the feeds' release is deployed already: nothing to do
    mirror = Feeds()  # a second pair of feeds, typed into the form
    try:
        before, deploys = run_ids(stack, "watch_trtllm_releases"), run_ids(stack, "deploy_llm")
        form = ui.trigger_form("watch_trtllm_releases")
        form.type_into("pypi_json_url", mirror.pypi)
        form.type_into("backend_releases_url", mirror.releases)
        form.type_into("engines_root", str(tmp_path))

        form.submit()

        run = new_run(stack, "watch_trtllm_releases", before)
        assert_succeeded(stack, ui, "watch_trtllm_releases", run["dag_run_id"], timeout_s=180)
        assert mirror.hits == 2, "the run reads the feeds typed into its form"
        assert rw.load_state(tmp_path)["latest"] == {"tensorrt_llm": "0.5.0", "tensorrtllm_backend": "0.5.0"}
        assert run_ids(stack, "deploy_llm") == deploys, "nothing new: no deploy_llm run is triggered"
    finally:
        mirror.server.shutdown()


def test_the_benchmark_dag_triggered_from_its_form_before_any_build_says_what_to_trigger_first(ui, stack):
    # Before the matrix test below: no engines Asset event yet. (Once there is one, a manual run
    # benchmarks the same engines as the asset-triggered run that test waits for, a second time.)
    before = run_ids(stack, "benchmark_llm_engines")
    form = ui.trigger_form("benchmark_llm_engines")

    form.submit()

    run = new_run(stack, "benchmark_llm_engines", before)
    assert stack.wait_for_run("benchmark_llm_engines", run["dag_run_id"], timeout_s=180)["state"] == "failed"
    states = {ti["task_id"]: ti["state"] for ti in stack.task_instances("benchmark_llm_engines", run["dag_run_id"])}
    assert states["engines_to_benchmark"] == "failed" and states.get("serve_and_benchmark") != "success", states
    log = stack.task_log("benchmark_llm_engines", run["dag_run_id"], "engines_to_benchmark", 1)
    assert "no engines to benchmark: build_llm_engines has not published any yet (trigger that DAG" in log


def test_a_matrix_built_from_its_form_is_benchmarked_by_the_dag_on_its_asset(ui, stack, free_ports):
    before = run_ids(stack, "build_llm_engines")
    benchmarks_before = run_ids(stack, "benchmark_llm_engines")
    form = ui.trigger_form("build_llm_engines")
    fill_short_run(form, free_ports)  # the engines are served with these params

    form.submit()

    build = new_run(stack, "build_llm_engines", before)
    assert_succeeded(stack, ui, "build_llm_engines", build["dag_run_id"])
    # The build's Asset event schedules the benchmark DAG by itself.
    benchmark = new_run(stack, "benchmark_llm_engines", benchmarks_before, "asset_triggered", timeout_s=60)
    assert_succeeded(stack, ui, "benchmark_llm_engines", benchmark["dag_run_id"])

    configs = [ti for ti in stack.task_instances("benchmark_llm_engines", benchmark["dag_run_id"])
               if ti["task_id"] == "serve_and_benchmark"]
    summary = stack.xcom("benchmark_llm_engines", benchmark["dag_run_id"], "compare_configs")
    assert summary["configs"] == len(configs) > 1
    assert Path(summary["table_path"]).is_file() and Path(summary["plot_path"]).is_file()
    assert not [p for p in stack.ours() if p.name == "tritonserver"], "every config's server is stopped"
    url = ui.follow_extra_link("benchmark_llm_engines", benchmark["dag_run_id"], "compare_configs", "Config comparison")
    ui.screenshot("llm-deployments-matrix")
    assert urlsplit(url).path.startswith("/llm-deploy/matrix/matrix-")
    assert ui.page.locator("#configs tr:has(td)").count() == len(configs) > 1
    assert_plots_load(ui, expected=1)
    report_links = ui.page.locator("#configs a", has_text="report")
    assert report_links.count() == len(configs), "each config's row links to its benchmark report"


def test_the_llm_deployments_view_requires_airflows_sign_in_and_stays_inside_the_volume(stack):
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{stack.api_url}/llm-deploy/", timeout=30)
    assert anonymous.value.code == 401
    signed_in = {"Authorization": f"Bearer {stack.token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{stack.api_url}/llm-deploy/", headers=signed_in)) as page:
        assert page.status == 200 and "Engines" in page.read().decode()
    # Sent byte for byte (http.client does not normalize the path, as browsers and httpx do).
    address = urlsplit(stack.api_url)
    for path in ("/llm-deploy/files/..%2F..%2F..%2F..%2Fetc%2Fpasswd.json",
                 "/llm-deploy/files/runs/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd.json",
                 "/llm-deploy/files/runs/../../../../etc/passwd.json",
                 "/llm-deploy/reports/%2e%2e/%2e%2e"):
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        try:
            connection.request("GET", path, headers=signed_in)
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        assert response.status in (400, 404) and "root:" not in body, (path, response.status, body)
        assert response.status == 404 or body.startswith('{"detail":"refused: '), (path, body)


def check_the_benchmark_report_page(ui, run: dict) -> None:
    """From the run's benchmark task, its "Benchmark report" link, and what that page shows."""
    conf = run["conf"]
    url = ui.follow_extra_link("deploy_llm", run["dag_run_id"], "benchmark", "Benchmark report", map_index=0)
    ui.screenshot("llm-deployments-report")
    assert urlsplit(url).path.startswith("/llm-deploy/reports/"), url
    tables = ui.page.locator("table.levels")
    assert [tables.nth(i).get_attribute("data-target") for i in range(tables.count())] == conf["benchmark_targets"]
    for i in range(tables.count()):
        levels = tables.nth(i).locator("tr[data-concurrency]")
        shown = [int(levels.nth(j).get_attribute("data-concurrency")) for j in range(levels.count())]
        assert shown == conf["benchmark_concurrency_levels"]
    assert_plots_load(ui, expected=3)
    assert ui.page.locator("#baseline tr:has(td)").count() >= 1, "the HF baseline beside the served figures"
    assert ui.page.locator("#verdict").inner_text()
    back = ui.page.locator("#airflow-run").get_attribute("href")
    assert back.endswith(f"/dags/deploy_llm/runs/{quote(run['dag_run_id'], safe='')}")


def check_the_deployments_view(ui, stack, run: dict) -> None:
    """The view's entry in the UI's navigation: the deployment the run left, and its engine."""
    ui.open_from_navigation("LLM deployments", re.compile(r".*/plugin/llm-deployments$"))
    view = ui.page.frame_locator("iframe").first
    deployments = view.locator("#deployments + table")
    deployments.wait_for()
    ui.screenshot("llm-deployments")
    name = DeploySpec.from_params(run["conf"]).deployment
    row = deployments.locator("tr", has_text=name)
    assert "serving" in row.inner_text() and run["dag_run_id"] in row.inner_text()
    engines = view.locator("#engines + table")
    assert engines.locator("tr:has(td)", has_text=f"{name} v").count() == 1
    assert engines.locator("tr:has(td)", has_text=run["dag_run_id"]).count() >= 1, "the engine's benchmark runs"


def assert_plots_load(ui, expected: int) -> None:
    images = ui.images_shown()
    assert len(images) == expected, images
    for image in images:
        assert image["status"] == 200 and image["type"] == "image/png", image
        assert image["width"] > 100 and image["height"] > 100, image


def schema_pattern(name: str) -> str:
    return param_schemas()[name]["pattern"]
