"""Triton python-backend models of the inflight_batcher_llm repository (our own code).

``llm_deploy.backends.torch.model_repo`` copies each file to ``<repo>/<model>/1/model.py``:

- ``preprocessing.py``: text -> token ids (+ upstream's bad/stop words lists); both backends.
- ``postprocessing.py``: token ids -> text; both backends.
- ``tensorrt_llm_torch.py``: the PyTorch twin of the tensorrtllm backend (decoupled, in-flight
  batched), the torch backend's engine (``backends/torch``).

Helper modules go next to the model.py of the models that import them (Triton puts the version
directory on sys.path): ``tokenizer_loading.py`` for pre/postprocessing, and
``tensorrt_llm_tensors.py`` (the tensorrt_llm model's request and response tensors) for
``tensorrt_llm_torch.py``.

They run inside Triton's python-backend stub, which imports ``triton_python_backend_utils``; they
are never imported from here. pre/postprocessing stand alone (numpy + transformers only) so the
same files serve the NGC TensorRT-LLM image, where llm_deploy is not installed.
"""
