"""Test-wide settings: the `slow` marker (end-to-end runs; `pytest -m "not slow"` skips them)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))   # tests/factories.py, shared by the test files


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end runs (still CPU)")
