"""scripts/gpu-check on a machine without an NVIDIA GPU: it must say so and
fail (exit 2), run only the parts that need no GPU, and mark no GPU check
as passed in its report."""
import os
import shutil
import subprocess

import pytest

from conftest import IC_BIN, MODEL, ROOT

NO_GPU = not (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidiactl"))


@pytest.mark.skipif(not NO_GPU, reason="this machine has an NVIDIA GPU: run scripts/gpu-check itself")
def test_without_a_gpu_it_fails_clearly(tmp_path):
    out = tmp_path / "report"
    p = subprocess.run(["/usr/bin/python3", str(ROOT / "scripts" / "gpu-check"), "--quick",
                        "--model", MODEL, "--out", str(out)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2, p.stdout + p.stderr
    assert "no NVIDIA GPU" in p.stderr
    report = (out / "gpu-check.md").read_text()
    assert "**No NVIDIA GPU was found: no GPU check ran, none passed.**" in report
    rows = [l for l in report.splitlines() if l.startswith("| ") and not l.startswith("| check")]
    assert rows and not any("| PASS |" in r for r in rows), report
    assert "| gpu | FAIL |" in report
    if os.path.exists(IC_BIN):  # the CPU part ran against the real server
        assert "NVML not loaded" in report and "plan 0 layers, llama.cpp offloaded 0" in report
