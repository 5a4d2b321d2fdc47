"""Why a Triton server did not start, in the step outcomes' terms (``llm_deploy.errors``).

A failed start is a StepError (a retry may help: a slow load, a flaky port race); a taken port
or a stub environment that corrupts tensors is not, and says what to change.
"""

from __future__ import annotations

from llm_deploy.errors import NonRetryableError, StepError


class ServerStartError(StepError):
    """tritonserver did not become ready; the message ends with the tail of its log."""


class PortInUseError(ServerStartError, NonRetryableError):
    """A port the server needs is taken; retrying will not help until it is freed."""


class TritonNotInstalled(ServerStartError):
    """The tritonserver binary (nvidia-pytriton wheel) is missing or incomplete."""


class StubEnvironmentError(TritonNotInstalled, NonRetryableError):
    """The python the model stubs would import from cannot host them; retrying will not help."""
