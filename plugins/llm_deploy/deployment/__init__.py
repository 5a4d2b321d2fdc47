"""A deployment: the long-running Triton server that users query, fed by qualified engines.

deploy_llm qualifies a candidate on a server of its own (start_server, benchmark, stop_server
on the run's ports), then compares it with the deployment's live version on the same load
(``comparison``) and, if it is not worse, promotes it (``lifecycle``): the live server loads the
candidate as the next version through Triton's repository API, the ensemble switches to it, and
the old version is unloaded once its requests are done. Rollback puts the previous version back
the same way; stop ends the deployment on purpose.

On the engines volume, ``deployments/<name>/`` holds the deployment's record (``record``), its
Triton model repository (``live_repository``: one set of composing models per version, one
ensemble that routes to the live set), the server's log, and the supervisor's (``supervisor``),
which restarts the server if it dies, with the live version.
"""
