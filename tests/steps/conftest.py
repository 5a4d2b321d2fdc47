"""Fixtures shared by the step tests; the fake Hub lives in tests/fixtures so other suites can reuse it."""

from tests.fixtures.hf_hub import hf_hub  # noqa: F401 - registers the fixture for this directory
