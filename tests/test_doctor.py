"""`make doctor` is the first thing a reader with a problem runs: it must not raise false alarms."""
from __future__ import annotations

import subprocess
import sys

from common.paths import REPO_ROOT


def test_doctor_reports_no_failure_for_what_setup_installed() -> None:
    proc = subprocess.run([sys.executable, "-m", "common.doctor"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    failed = [line for line in proc.stdout.splitlines() if "FAILED" in line]
    assert not failed, "\n".join(failed)
    for expected in ("import vllm", "import sglang", "bandwidth"):
        assert expected in proc.stdout, proc.stdout
