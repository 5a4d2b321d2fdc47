"""Tutorial step "check the engine with run.py": greedy-generate the tutorial's prompt.

The backend runs its check (the twin: token for token against transformers' greedy output;
trtllm: upstream's run.py must print a text). A verified engine is marked so (a later run with
the same hash skips download, build and verify), and retention removes older engines of the model.
"""

from __future__ import annotations

from llm_deploy import engine_cache
from llm_deploy.backends.registry import backend_for
from llm_deploy.records import VerifyRecord
from llm_deploy.spec import DeploySpec


def verify_engine(spec: DeploySpec, engine: dict | None, checkpoint: dict) -> VerifyRecord:
    """``engine`` is None where the flow builds none (build_engine skipped): the backend checks the
    checkpoint the server will load, and there is no engine to mark or to keep."""
    if engine is None:
        return backend_for(spec).verify_engine(spec, engine, checkpoint)
    # Leased while it is checked: another run's retention must not remove it meanwhile.
    with engine_cache.in_use(engine["engine_dir"], "verify"):
        record = backend_for(spec).verify_engine(spec, engine, checkpoint)
        engine_cache.mark_verified(engine["engine_dir"], record.to_xcom())
    engine_cache.apply_retention(spec, engine["engine_dir"])
    return record
