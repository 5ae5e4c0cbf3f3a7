"""The per-step losses of every digits config match the committed record (tests/behaviour/)."""
import importlib.util
import json

import pytest
import tempfile
from pathlib import Path

pytestmark = pytest.mark.isa   # CPU-sensitive: .ci/run runs these again under other instruction sets

HERE = Path(__file__).parent / "behaviour"


def _module():
    spec = importlib.util.spec_from_file_location("step_losses", HERE / "step_losses.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_per_step_losses_of_every_digits_config_match_the_record():
    mod = _module()
    with tempfile.TemporaryDirectory() as tmp:
        now = mod.run_all(Path(tmp))
    ref = json.loads(mod.REFERENCE.read_text())
    reference = ref["steps"]
    assert set(reference) == set(now)
    problems = mod.compare(reference, now, mod.tolerance(ref["versions"]))
    assert not problems, problems[:5]


def test_the_comparison_notices_a_changed_loss():
    mod = _module()
    ref = {"a.yaml": [{"total": 1.0, "ce": 1.0}]}
    assert mod.compare(ref, {"a.yaml": [{"total": 1.0, "ce": 1.0}]}) == []
    assert mod.compare(ref, {"a.yaml": [{"total": 1.0 + 1e-5, "ce": 1.0}]})
    assert mod.compare(ref, {"a.yaml": []})
