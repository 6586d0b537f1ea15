"""Every architecture builds and runs under each Keras backend (one subprocess per backend,
since the backend is fixed when Keras is first imported)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_checks(backend: str) -> list[dict]:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2",
           "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-m", "tests.backend_check"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.parametrize("backend, module", [("tensorflow", "tensorflow"), ("jax", "jax")])
def test_every_architecture_builds_and_runs(backend, module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed; `pip install -e '.[test]'` installs it")
    from segbeam import models

    reports = _run_checks(backend)
    assert reports[0] == {"check": "backend", "backend": backend}
    assert {"check": "unpooling", "ok": True} in reports
    forward = [r for r in reports if r["check"] == "forward"]
    expected = {(spec.name, (360, 480), 21) for spec in models.list_models()}
    assert {(r["model"], tuple(r["size"]), r["classes"]) for r in forward} == expected
    for report in forward:
        assert report["shape"] == [1, *report["size"], report["classes"]], report
        assert report["finite"], report
