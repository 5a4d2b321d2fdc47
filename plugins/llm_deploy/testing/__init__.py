"""Test and benchmark infrastructure shared by tests/ and benchmarks/ (never imported by DAGs)."""
