#!/usr/bin/env bash
# README command 2: install what the tests need, then run the whole suite (unit, template,
# DAG integrity, and end-to-end tests against a real Triton server and the real SmolLM2 model).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e" -x
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh --dev
source scripts/airflow-env.sh
# Tests get their own Airflow home and engines volume; the quick start's are left untouched.
export AIRFLOW_HOME="$PWD/.cache/test-airflow"
export LLM_DEPLOY_ENGINES_ROOT="$PWD/.cache/test-engines"
mkdir -p "$AIRFLOW_HOME" "$LLM_DEPLOY_ENGINES_ROOT"

exec python -m pytest "$@"
