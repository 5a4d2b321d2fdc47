"""The Airflow UI in a real browser, as a person uses it: Debian's Chromium driven by Playwright.

``find_or_install_chromium`` uses /usr/bin/chromium, installing Debian's ``chromium`` package
with apt-get when it is missing and we are root (Playwright's own browser download is never
used: Playwright only drives the system browser). ``AirflowUI`` signs in through the login page
and opens a DAG's trigger form, a task's extra link or a plugin's view; ``TriggerForm`` reads and fills that form the way its React
components render it (Airflow 3.3's FlexibleForm): one accordion section per param section,
one field per param named ``element_<param>``, the description as the field's helper text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support.apt import apt_install, can_install

CHROMIUM = "/usr/bin/chromium"
APT_PACKAGES = ("chromium",)


class BrowserUnavailable(RuntimeError):
    """Chromium is not installed and this process cannot install it."""


def find_or_install_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if not can_install():
        raise BrowserUnavailable(f"{CHROMIUM} is missing; installing Debian's chromium needs root and apt-get")
    apt_install(*APT_PACKAGES)
    return CHROMIUM


@dataclass
class AirflowUI:
    page: object  # playwright.sync_api.Page
    url: str
    shots: Path

    def sign_in(self, username: str, password: str) -> None:
        self.page.goto(self.url + "/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(password)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/(\?.*)?$"))

    def trigger_form(self, dag_id: str) -> TriggerForm:
        self.page.goto(f"{self.url}/dags/{dag_id}")
        self.page.get_by_role("button", name="Trigger").first.click()
        dialog = self.page.get_by_role("dialog")
        dialog.locator("[data-part='item-trigger']").first.wait_for()
        return TriggerForm(self, dag_id, dialog)

    def run_page(self, dag_id: str, run_id: str):
        """The run's page: the grid of its tasks on the left, its state badge in the header."""
        self.page.goto(f"{self.url}/dags/{dag_id}/runs/{run_id}")
        badge = self.page.locator("[data-testid='state-badge']").first
        badge.wait_for()
        return badge

    def follow_extra_link(self, dag_id: str, run_id: str, task_id: str, name: str, map_index: int = -1) -> str:
        """Open the task instance's Details tab (where Airflow 3 shows a task's extra links), press
        its link ``name``; the URL it led to."""
        mapped = f"/mapped/{map_index}" if map_index >= 0 else ""
        self.page.goto(f"{self.url}/dags/{dag_id}/runs/{run_id}/tasks/{task_id}{mapped}/details")
        link = self.page.get_by_role("link", name=name, exact=True)
        link.wait_for()
        href = link.get_attribute("href")
        link.click()  # same origin: the UI opens it in this tab
        self.page.wait_for_url(re.compile(".*" + re.escape(href.split("?")[0]) + ".*"))
        self.page.wait_for_load_state("load")
        return self.page.url

    def open_from_navigation(self, name: str, url: re.Pattern, tries: int = 3) -> None:
        """Press the navigation bar's link ``name`` on the home page and wait until ``url`` shows.

        The bar draws its plugin entries once the UI's config has loaded, and the entries shift as
        it does: a click landing during that re-render can hit its neighbour (a menu button, which
        goes nowhere). So a click that led nowhere within a few seconds is made again."""
        self.page.goto(self.url + "/")
        for attempt in range(1, tries + 1):
            self.page.get_by_role("link", name=name).first.click()
            try:
                self.page.wait_for_url(url, timeout=10_000)
                return
            except Exception:  # noqa: BLE001 - playwright's TimeoutError; the last one is raised
                self.screenshot(f"navigation-{name}-try{attempt}")
                if attempt == tries:
                    raise

    def plugin_view(self, url_route: str):
        """A plugin's external view, as the UI's navigation opens it: the UI around, the view in a frame."""
        self.page.goto(f"{self.url}/plugin/{url_route}")
        frame = self.page.frame_locator("iframe").first
        frame.locator("body").wait_for()
        return frame

    def images_shown(self, scope=None) -> list[dict]:
        """Every <img> of the page (or of ``scope``, a frame), as the browser loaded and decoded it,
        with the response to a fetch of its URL in this session."""
        images = (scope or self.page).locator("img")
        shown = []
        for i in range(images.count()):
            image = images.nth(i)
            image.scroll_into_view_if_needed()
            decoded = image.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])")
            src = image.evaluate("img => img.src")
            response = self.page.request.get(src)
            shown.append({"src": src, "status": response.status, "type": response.headers.get("content-type"),
                          "width": decoded[0], "height": decoded[1]})
        return shown

    def screenshot(self, name: str) -> Path:
        self.shots.mkdir(parents=True, exist_ok=True)
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")
        return path


@dataclass
class TriggerForm:
    ui: AirflowUI
    dag_id: str
    dialog: object  # playwright.sync_api.Locator

    @property
    def trigger_button(self):
        return self.dialog.get_by_role("button", name="Trigger", exact=True)

    def section_names(self) -> list[str]:
        return [name.strip() for name in self.dialog.locator("[data-part='item-trigger']").all_inner_texts()]

    def sections_in_error(self) -> list[str]:
        """Sections drawn with the error icon beside their name (a field inside is invalid)."""
        triggers = self.dialog.locator("[data-part='item-trigger']")
        return [t.inner_text().strip() for t in triggers.all() if t.locator(".chakra-stack svg").count()]

    def fields_in_error(self) -> dict[str, str]:
        """Param label -> the error text the form shows under it."""
        errors = {}
        for root in self.dialog.locator("[data-part='root'][data-invalid]").all():
            label = root.locator("label").first.inner_text().replace("*", "").strip()
            errors[label] = " ".join(root.locator("[data-part='error-text']").all_inner_texts())
        return errors

    def open_section(self, name: str) -> None:
        """Open one section; the form keeps one open at a time, so the one open before closes."""
        trigger = self.dialog.locator("[data-part='item-trigger']", has_text=re.compile(rf"^{re.escape(name)}$"))
        if trigger.get_attribute("aria-expanded") == "true":
            return
        was_open = [t.get_attribute("aria-controls") for t in
                    self.dialog.locator("[data-part='item-trigger'][aria-expanded='true']").all()]
        trigger.click()
        self.dialog.locator(f"[id='{trigger.get_attribute('aria-controls')}']").wait_for(state="visible")
        for content in was_open:  # let the closing animation end before anything is read or shot
            self.dialog.locator(f"[id='{content}']").wait_for(state="hidden")

    def shown_descriptions(self) -> dict[str, str]:
        """Param label -> helper text, for the fields of the sections open now."""
        shown = {}
        for root in self.dialog.locator("[data-part='root'][role='group']").all():
            if not root.is_visible():
                continue
            label = root.locator("label").first.inner_text().replace("*", "").strip()
            helper = root.locator("[data-part='helper-text']")
            shown[label] = helper.first.inner_text().strip() if helper.count() else ""
        return shown

    def field(self, param: str):
        return self.dialog.locator(f"[name='element_{param}']")

    def type_into(self, param: str, value: str) -> str:
        """Type into a text or number field and leave it; returns the value the field then holds."""
        field = self.field(param)
        field.fill(value)
        field.press("Tab")
        return field.input_value()

    def set_checkbox(self, param: str, checked: bool) -> None:
        box = self.field(param)
        if box.is_checked() != checked:
            # Chakra hides the native input under its styled control: click the control.
            box.locator("xpath=..").click()
        assert box.is_checked() == checked

    def submit(self) -> None:
        self.trigger_button.click()

    def alert_text(self) -> str:
        """The error the form shows at its top after a refused trigger (the API's 400 answer)."""
        alert = self.dialog.locator(".chakra-alert__root").first
        alert.wait_for()
        alert.scroll_into_view_if_needed()
        return alert.inner_text()
