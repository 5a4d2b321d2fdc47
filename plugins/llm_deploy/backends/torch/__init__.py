"""The PyTorch backend: the CPU twin of TensorRT-LLM (own Llama forward + in-flight batcher)."""
