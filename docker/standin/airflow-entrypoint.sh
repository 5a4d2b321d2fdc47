#!/usr/bin/env bash
# /entrypoint of llm-deploy's stand-in for the official apache/airflow image, built by
# docker/build_compose_images.py where no registry can be reached. It keeps the part of the
# official image's contract that docker-compose.yaml relies on:
#   _AIRFLOW_DB_MIGRATE=true        run `airflow db migrate` before the command
#   _AIRFLOW_WWW_USER_CREATE=true   create the admin user _AIRFLOW_WWW_USER_USERNAME with
#                                   _AIRFLOW_WWW_USER_PASSWORD (FAB keeps one that exists)
#   the command                     an airflow subcommand (api-server, scheduler, celery worker,
#                                   ...), `airflow ...`, or bash, sh, python run as given
# Not carried over: the official image's wait for the database (compose's depends_on with
# service_healthy does that), _PIP_ADDITIONAL_REQUIREMENTS, and its handling of a uid that has
# no passwd entry (run as AIRFLOW_UID 50000, the default).
set -euo pipefail

if [[ "${_AIRFLOW_DB_MIGRATE:-}" == "true" ]]; then
  airflow db migrate
fi

if [[ "${_AIRFLOW_WWW_USER_CREATE:-}" == "true" ]]; then
  # FAB leaves a user that already exists as it is (a second `compose up`), and says so.
  airflow users create --role Admin --username "${_AIRFLOW_WWW_USER_USERNAME:-admin}" \
    --password "${_AIRFLOW_WWW_USER_PASSWORD:?set _AIRFLOW_WWW_USER_PASSWORD}" \
    --firstname "${_AIRFLOW_WWW_USER_FIRSTNAME:-Airflow}" --lastname "${_AIRFLOW_WWW_USER_LASTNAME:-Admin}" \
    --email "${_AIRFLOW_WWW_USER_EMAIL:-airflowadmin@example.com}"
fi

case "${1:-}" in
  "") exec airflow --help ;;
  airflow) shift; exec airflow "$@" ;;
  bash | sh | python | python3 | /*) exec "$@" ;;
  *) exec airflow "$@" ;;
esac
