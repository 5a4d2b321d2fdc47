"""The Airflow Assets this project's DAGs announce (names and URIs kept in one place)."""

from __future__ import annotations

from airflow.sdk import Asset

# A promotion, rollback or stop changed what a deployment serves; the event's extra names the
# deployment, its live version and where it answers. Its full state is the record on the volume.
DEPLOYMENTS = Asset(name="llm_deployments", uri="x-llm-deploy://deployments")
