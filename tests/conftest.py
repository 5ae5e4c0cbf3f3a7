"""Test-wide settings: the `slow` marker (end-to-end runs; `pytest -m "not slow"` skips them) and the `isa`
marker (CPU-sensitive tests, run again by .ci/run under other instruction sets)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))   # tests/factories.py, shared by the test files


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: longer end-to-end runs (still CPU)")
    config.addinivalue_line("markers", "isa: results that could move with the CPU's instruction set (the behaviour "
                                       "record, committed results, zoo cards, crash-safety equality); .ci/run runs "
                                       "them again under ATEN_CPU_CAPABILITY=avx2 and =default")
