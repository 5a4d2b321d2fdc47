"""The fake Hub (tests/fixtures/hf_hub.py) for the weight-source tests."""

from tests.fixtures.hf_hub import hf_hub  # noqa: F401 - registers the fixture for this directory
