"""A deployment: the long-running Triton server that users query, fed by qualified engines.

deploy_llm qualifies a candidate on a server of its own (start_server, benchmark, stop_server
on the run's ports), then compares it with the deployment's live version on the same load
(``comparison``) and, if it is not worse, promotes it (``lifecycle``): the live server loads the
candidate as the next version through Triton's repository API, the ensemble switches to it, and
the old version is unloaded once its requests are done. Rollback puts the previous version back
the same way; stop ends the deployment on purpose.

On the engines volume, ``deployments/<name>/`` holds the deployment's record (``record``), its
Triton model repository (``live_repository``: one set of composing models per version, one
ensemble that routes to the live set), how its server runs (``launch``: ``server.json``), and
the server's log. The server runs under our supervisor (``supervisor``), or as a container that
Docker's restart policy keeps up (``container_entry``); either restarts it, if it dies, on the
version live at that moment.
"""
