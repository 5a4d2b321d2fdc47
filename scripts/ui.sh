#!/usr/bin/env bash
# After the quick start: the embedded Airflow (SQLite, LocalExecutor) with its UI, to trigger the
# DAGs from their forms and watch the runs. Starts the api-server (on 127.0.0.1 only), scheduler,
# dag-processor and triggerer, prints the URL and the login, and stops them all on Ctrl-C.
#   scripts/ui.sh                 UI on http://127.0.0.1:8080
#   LLM_DEPLOY_UI_PORT=9090 scripts/ui.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/bootstrap.sh
source scripts/airflow-env.sh
port=${LLM_DEPLOY_UI_PORT:-8080}
logs="$AIRFLOW_HOME/logs/ui"
mkdir -p "$logs" "$LLM_DEPLOY_ENGINES_ROOT"

# Loopback only (DESIGN.md's exposure rule); the task workers reach the Execution API there too.
export AIRFLOW__API__HOST=127.0.0.1
export AIRFLOW__API__PORT=$port
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$port"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$port/execution/"
export AIRFLOW__CORE__EXECUTOR=LocalExecutor
# SimpleAuthManager: one admin user, whose password Airflow generates once into this file.
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=admin:admin
passwords="$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated"

if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "ui: port $port is in use (another Airflow UI?); set LLM_DEPLOY_UI_PORT to a free port" >&2
  exit 1
fi

airflow db migrate >"$logs/db-migrate.log" 2>&1 || { tail -20 "$logs/db-migrate.log"; exit 1; }
airflow pools set gpu 1 "GPU workers: one slot per GPU set" >/dev/null

pids=()
stop() {
  (( ${#pids[@]} )) || return 0
  echo "ui: stopping the Airflow components"
  # SIGTERM to each component alone: it stops its own workers and running tasks in order (a
  # signal to the whole group at once can kill a LocalExecutor worker holding the task queue's
  # lock and leave the scheduler waiting forever). Whatever of a component's group (setsid) is
  # left after 30 s is killed.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 60); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

for component in api-server scheduler dag-processor triggerer; do
  setsid airflow "$component" >"$logs/$component.log" 2>&1 </dev/null &
  pids+=($!)
done

echo "ui: starting the api-server, scheduler, dag-processor and triggerer (logs: $logs)"
ready=0
for _ in $(seq 240); do
  if python - "$port" <<'PY' 2>/dev/null; then ready=1; break; fi
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
health = json.load(opener.open(f"http://127.0.0.1:{sys.argv[1]}/api/v2/monitor/health", timeout=2))
sys.exit(health["scheduler"]["status"] != "healthy")
PY
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "ui: a component exited; see $logs" >&2; tail -5 "$logs"/*.log >&2; exit 1; }
  done
  sleep 0.5
done
(( ready )) || { echo "ui: the api-server did not report a healthy scheduler within 120 s; see $logs" >&2; exit 1; }

password=$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["admin"])' "$passwords")
cat <<EOF
ui: Airflow is up at http://127.0.0.1:$port  (user: admin, password: $password)
ui: press Trigger on deploy_llm to run it with the form's defaults; the engines volume is $LLM_DEPLOY_ENGINES_ROOT
ui: Ctrl-C stops everything
EOF
wait -n "${pids[@]}" || true
echo "ui: a component exited; see $logs" >&2
exit 1
