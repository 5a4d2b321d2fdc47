"""huggingface_hub's exceptions as StepErrors that say what to do: retry, or fix the spec.

Airflow retries a StepError and fails a NonRetryableError at once, so the split matters: a 503
or a dropped connection is worth a retry, a gated repo without access never is. The Hub token
may be named (configured or not) but is never part of a message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from llm_deploy.errors import NonRetryableError, StepError
from llm_deploy.spec import DeploySpec

T = TypeVar("T")


def hub_call(spec: DeploySpec, call: Callable[[], T], token: str | None) -> T:
    """Run one huggingface_hub call, raising what translate_hub_error makes of its failures."""
    try:
        return call()
    except StepError:
        raise
    except Exception as exc:
        translated = translate_hub_error(exc, spec, token)
        if translated is None:
            raise
        raise translated from exc


def translate_hub_error(exc: BaseException, spec: DeploySpec, token: str | None) -> StepError | None:
    """A StepError saying what to do, or None to let an unexpected error through unchanged."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # huggingface_hub wraps some HTTP failures (a 403 on a file, say) in a generic
    # "cannot reach the Hub" error, so look at the whole chain, not just the outermost error.
    chain = list(_exception_chain(exc))
    http = next((e for e in chain if isinstance(e, HfHubHTTPError)), None)
    status = http.response.status_code if http is not None and http.response is not None else None
    where = f"{spec.model_id} (revision {spec.model_revision!r})"

    if any(isinstance(e, RevisionNotFoundError) for e in chain):
        return NonRetryableError(
            f"revision {spec.model_revision!r} of model {spec.model_id} does not exist on the Hub: "
            "set model_revision to a branch, tag or full commit sha of that repo"
        )
    if any(isinstance(e, GatedRepoError) for e in chain) or status in (401, 403):
        return NonRetryableError(_access_message(spec, token, status, gated=isinstance(http, GatedRepoError)))
    if isinstance(http, RepositoryNotFoundError):
        return NonRetryableError(f"model {spec.model_id} does not exist on the Hub: check model_id")
    if isinstance(http, RemoteEntryNotFoundError):
        return StepError(f"a file of {where} listed by the Hub could not be fetched ({http}); retrying")
    if any(isinstance(e, OfflineModeIsEnabled) for e in chain):
        return NonRetryableError(
            f"cannot download {where}: HF_HUB_OFFLINE is set on this worker; unset it, or use "
            "model_source='local' with a checkpoint already on the volume"
        )
    if status is not None and (status >= 500 or status in (408, 429)):
        return StepError(f"the Hub answered HTTP {status} for {where}; retrying later may help")
    if status is not None:
        return NonRetryableError(f"the Hub refused the request for {where}: HTTP {status}: {_server_message(http)}")
    if any(_is_network_error(e) for e in chain):
        return StepError(f"could not download {where}: {type(exc).__name__}: {exc}")
    return None


def _access_message(spec: DeploySpec, token: str | None, status: int | None, *, gated: bool) -> str:
    message = (
        f"model {spec.model_id} is gated or private: accept its license on the Hub and put a token "
        f"with read access in Airflow connection {spec.hf_conn_id!r}"
    )
    message += " (no token is configured there)" if not token else " (the Hub refused the configured token)"
    if status == 401 and not gated:
        message += "; the Hub answers the same for a repo that does not exist, so also check model_id"
    return message


def _server_message(error: Any) -> str:
    return str(getattr(error, "server_message", None) or error).strip().splitlines()[0]


def _is_network_error(error: BaseException) -> bool:
    import httpx2

    from huggingface_hub.errors import LocalEntryNotFoundError

    return isinstance(error, (httpx2.TransportError, LocalEntryNotFoundError, ConnectionError, TimeoutError))


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
