"""The report view: the engines volume read as web pages (catalog: what is there; app: the pages).

``PREFIX``: where Airflow's api-server serves the pages (llm_deploy.airflow.report_view), and
what the links to them start with (llm_deploy.airflow.report_links).
"""

PREFIX = "/llm-deploy"
