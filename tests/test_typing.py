"""The identity core and the storage layer type-check under `mypy --strict`."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_identity_and_storage_pass_mypy_strict():
    done = subprocess.run([sys.executable, "-m", "mypy", "--strict", "identity", "config"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
