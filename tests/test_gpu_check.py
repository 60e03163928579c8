"""scripts/gpu_check.sh on a machine without a GPU: it refuses to run, says why, and exits non-zero; the
GPU workflow calls it. (Its full run needs CUDA: .github/workflows/gpu.yml.)"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def run(env_path: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": env_path, **env}, stdin=subprocess.DEVNULL)


def test_syntax_and_strict_mode():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    assert "set -euo pipefail" in SCRIPT.read_text()


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="a GPU machine: the refusal path is not taken")
def test_refuses_without_nvidia_smi():
    proc = run(os.environ["PATH"])
    assert proc.returncode == 2 and "nvidia-smi not found" in proc.stderr and "make test" in proc.stderr


def test_refuses_when_torch_sees_no_cuda(tmp_path):
    """A fake nvidia-smi that lists a GPU, but .venv's torch has no CUDA (this machine): exit 2, no tests run."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch sees CUDA here")
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: Fake GPU (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    proc = run(f"{tmp_path}:{os.environ['PATH']}", GPU_CHECK_SKIP_SETUP="1")
    assert proc.returncode == 2 and "cannot see CUDA" in proc.stderr
    assert "unit tests" not in proc.stdout


def test_gpu_workflow_calls_it():
    workflow = (REPO / ".github" / "workflows" / "gpu.yml").read_text()
    assert "scripts/gpu_check.sh" in workflow
