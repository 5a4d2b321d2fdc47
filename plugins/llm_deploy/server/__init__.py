"""Launching and stopping the Triton Inference Server that serves a rendered model repository."""
