"""Runtimes that a deployment can be built for and served with."""
