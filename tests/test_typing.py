"""The package passes mypy in strict mode (configured in setup.cfg)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_mypy_strict_passes() -> None:
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "flask_sse_ext"],
        cwd=root, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout
