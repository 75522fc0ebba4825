"""Two processes running the same locked flow against a real Prefect server never overlap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

PROBE = Path(__file__).with_name("lock_probe.py")
ROOT = Path(__file__).resolve().parents[2]


def test_two_processes_twenty_runs_each_never_overlap(prefect_server, db_url, tmp_path):
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PYTHONPATH": str(ROOT),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    boot = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from flows.locks import ensure_limits; print(ensure_limits(sys.argv[1], 'public'))",
            db_url,
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert boot.returncode == 0, boot.stderr
    outs = [tmp_path / f"p{i}.jsonl" for i in range(2)]
    start_at = str(time.time() + 20)  # after both interpreters have imported Prefect
    procs = [
        subprocess.Popen(
            [sys.executable, str(PROBE), db_url, str(o), "20", start_at],
            env=env,
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        for o in outs
    ]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    spans = sorted(json.loads(line) for o in outs for line in o.read_text().splitlines())
    assert len(spans) == 40
    for (a_in, a_out), (b_in, b_out) in zip(spans, spans[1:], strict=False):
        assert a_out <= b_in, f"runs overlapped: {a_in}-{a_out} and {b_in}-{b_out}"
    # Both processes really ran interleaved, not one after the other.
    first_owner = [0 if json.dumps(s) in outs[0].read_text() else 1 for s in spans]
    assert first_owner.count(0) == 20 and len({*first_owner[:20]}) == 2
