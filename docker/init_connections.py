#!/usr/bin/env python3
"""Create or update the Airflow connection that holds the Hugging Face token (compose init).

The token is read from a file (``HF_TOKEN_FILE``, default /run/secrets/hf_token: the compose
secret that docker compose fills from the host's HF_TOKEN environment variable), never from
argv, and stored in the metadata DB (encrypted when AIRFLOW__CORE__FERNET_KEY is set). An empty
or missing token leaves an existing connection alone: public models need none.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CONN_ID = os.environ.get("LLM_DEPLOY_HF_CONN_ID", "huggingface_default")


def read_token() -> str:
    path = Path(os.environ.get("HF_TOKEN_FILE", "/run/secrets/hf_token"))
    return path.read_text().strip() if path.is_file() else ""


def upsert_hf_connection(token: str) -> str:
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        conn = session.query(Connection).filter(Connection.conn_id == CONN_ID).one_or_none()
        if not token:
            return "kept" if conn else "absent"
        if conn is None:
            conn = Connection(conn_id=CONN_ID, conn_type="huggingface",
                              description="Hugging Face token (from HF_TOKEN at docker compose up)")
            session.add(conn)
            action = "created"
        else:
            action = "updated"
        conn.password = token
        return action


def main() -> int:
    action = upsert_hf_connection(read_token())
    messages = {
        "created": f"connection {CONN_ID} created from HF_TOKEN",
        "updated": f"connection {CONN_ID} updated from HF_TOKEN",
        "kept": f"HF_TOKEN is empty: connection {CONN_ID} left as it was",
        "absent": f"HF_TOKEN is empty: no connection {CONN_ID} (fine for public and builtin models)",
    }
    print(f"init_connections: {messages[action]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
