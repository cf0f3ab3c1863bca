"""Under CI=true a missing real part (bundled model, vllm, dspy, textgrad) fails; without CI it skips.

The real-part tests go through ``tests.conftest.require`` / ``require_spec`` / ``skip_or_fail``
(the bundled model and vllm fixtures, test_baselines, test_dspy_adapter, test_textgrad_adapter,
test_vllm_async, test_lifecycle_vllm, test_slurm, test_textgrad_layout); this checks that helper
in a pytest subprocess, and one real-part test file with vllm made missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = '''
from tests.conftest import require
require("mtg_no_such_module_for_the_ci_probe")

def test_never_runs():
    pass
'''


def _pytest(tmp_path: Path, source: str, ci: str | None):
    test = tmp_path / "test_probe.py"
    test.write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(REPO)
    if ci is not None:
        env["CI"] = ci
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(test)]
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_module_fails_under_ci(tmp_path, ci):
    p = _pytest(tmp_path, PROBE, ci)
    assert p.returncode != 0, p.stdout
    assert "CI=true and a required part is missing" in p.stdout and "mtg_no_such_module_for_the_ci_probe" in p.stdout


def test_missing_module_skips_without_ci(tmp_path):
    p = _pytest(tmp_path, PROBE, None)
    assert p.returncode in (0, 5), p.stdout  # 5: everything skipped
    assert "skipped" in p.stdout and "mtg_no_such_module_for_the_ci_probe" in p.stdout


BLOCK_VLLM = "import sys\nsys.modules['vllm'] = None  # as if vllm were not installed\n"


@pytest.mark.parametrize("ci", ["true", None])
def test_vllm_async_tests_fail_under_ci_when_vllm_is_missing(tmp_path, ci):
    (tmp_path / "block_vllm.py").write_text(BLOCK_VLLM)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(tmp_path)])
    if ci is not None:
        env["CI"] = ci
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "block_vllm", "-rs",
            str(REPO / "tests" / "test_vllm_async.py")]
    p = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if ci:
        assert p.returncode != 0 and "skipped" not in p.stdout, p.stdout[-2000:]
        assert "CI=true and a required part is missing: vllm is not installed" in p.stdout, p.stdout[-2000:]
    else:
        assert p.returncode == 0 and "skipped" in p.stdout and "vllm is not installed" in p.stdout, p.stdout[-2000:]
