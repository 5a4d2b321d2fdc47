"""Where a deployment's Hugging Face checkpoint comes from, one module per ``model_source``.

``builtin``, ``local`` and ``huggingface`` each put (or find) a checkpoint on the engines volume
and describe it with a ``published.WeightsRecord``; steps/download_weights.py picks the module.
"""
