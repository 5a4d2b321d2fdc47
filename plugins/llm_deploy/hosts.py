"""The name of the host a step runs on, as Airflow records it for the task instances there.

Airflow's workers report ``[core] hostname_callable`` (the host's FQDN by default) for every task
they run, and the server-locality policy routes by that name (``airflow/locality.py``): a record
that says which host holds a process must use the very same name.
"""

from __future__ import annotations

import socket


def this_host() -> str:
    try:
        from airflow.sdk.api.client import get_hostname
    except ImportError:  # no Airflow here (a step run by hand): Airflow's own default
        return socket.getfqdn()
    return get_hostname()
