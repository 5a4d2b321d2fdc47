"""Triton's model repository API (load, unload, readiness), as the deployment uses it.

tritonclient's HTTP client speaks it; this wraps the few calls with the deployment's timeouts and
turns Triton's refusals into errors that say which model and what the server answered. A load of
a model that is already loaded is a reload, which Triton completes without the model becoming
unavailable; an unload lets the model's requests in flight finish first.
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

from llm_deploy.errors import StepError

log = logging.getLogger(__name__)


class RepositoryApiError(StepError):
    """Triton refused a load or unload, or did not get there in time."""


class RepositoryApi:
    def __init__(self, http_url: str, *, timeout_s: float = 600, headers: dict[str, str] | None = None):
        import tritonclient.http as httpclient

        self._client = httpclient.InferenceServerClient(urlsplit(http_url).netloc, network_timeout=timeout_s,
                                                        connection_timeout=timeout_s)
        self._headers = headers or {}
        self.timeout_s = timeout_s

    def load(self, model: str) -> None:
        """Load (or reload) ``model`` from the repository; returns once it is ready."""
        from tritonclient.utils import InferenceServerException

        started = time.monotonic()
        try:
            self._client.load_model(model, headers=self._headers)
        except InferenceServerException as exc:
            raise RepositoryApiError(f"tritonserver refused to load {model}: {exc.message()}") from None
        log.info("loaded %s in %.1f s", model, time.monotonic() - started)

    def unload(self, model: str) -> None:
        from tritonclient.utils import InferenceServerException

        try:
            self._client.unload_model(model, headers=self._headers)
        except InferenceServerException as exc:
            raise RepositoryApiError(f"tritonserver refused to unload {model}: {exc.message()}") from None

    def ready(self, model: str, version: str = "") -> bool:
        from tritonclient.utils import InferenceServerException

        try:
            return self._client.is_model_ready(model, version, headers=self._headers)
        except InferenceServerException:
            return False

    def states(self) -> dict[str, str]:
        """Every model in the repository and its state (READY, UNAVAILABLE, LOADING, UNLOADING)."""
        index = self._client.get_model_repository_index(headers=self._headers)
        return {entry["name"]: entry.get("state", "") for entry in index}

    def wait_unloaded(self, models: list[str], timeout_s: float = 120) -> list[str]:
        """Wait until none of ``models`` is loaded any more; those still loaded after the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = self.states()
            left = [m for m in models if states.get(m) in ("READY", "UNLOADING", "LOADING")]
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.5)

    def close(self) -> None:
        self._client.close()
