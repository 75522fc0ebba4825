"""The test run's configuration keeps Hypothesis's deprecation warnings out of the summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_hypothesis_deprecation_warnings_are_silenced(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "from hypothesis import HealthCheck\n\n"
        "def test_deprecated():\n"
        "    assert HealthCheck(9) is HealthCheck.function_scoped_fixture  # an integer value: deprecated\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-q", str(probe)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 passed" in out.stdout and "HypothesisDeprecationWarning" not in out.stdout + out.stderr, out.stdout
