"""``scripts/test`` on a machine where it cannot install what the suite needs: it says what to
do, and stops before running anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence

from support.paths import ROOT

SCRIPT = ROOT / "scripts" / "test"


def bin_dir(tmp_path: Path, tools: List[str]) -> Path:
    """A PATH with only ``tools`` (none of redis-server, redis-cli, nginx, chromium, python)."""
    path = tmp_path / "bin"
    path.mkdir()
    for tool in ["bash", "dirname", "id", *tools]:
        found = shutil.which(tool)
        assert found is not None, tool
        (path / tool).symlink_to(found)
    return path


def run(path: Path, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(path / "bash"), str(SCRIPT)],
        env={"PATH": str(path), "HOME": "/nonexistent"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_apt_get_it_names_what_to_install(tmp_path: Path) -> None:
    result = run(bin_dir(tmp_path, []))
    assert result.returncode == 1
    assert (
        "the suite needs redis-server redis-tools nginx chromium openssl iproute2 nodejs npm on PATH"
        in result.stderr
    )
    assert "no apt-get here" in result.stderr
    assert result.stdout == ""


def as_another_user() -> List[str]:
    """The command prefix that runs the script as a user who is not root: the suite's own user,
    or, when the suite runs as root, nobody (through util-linux's ``setpriv``)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "running as root, the test needs setpriv (util-linux) to drop to nobody"
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--"]


def test_neither_root_nor_sudo_gets_the_command_to_run_as_root(tmp_path: Path) -> None:
    """Runs as whoever runs the suite: never skipped (as root, it drops to nobody)."""
    # apt-get is there (a stand-in that fails if ever run); sudo is not; the user is not root
    # and may enter the bin directory (pytest's own temporary directories are root's only).
    shared = Path(tempfile.mkdtemp())
    try:
        shared.chmod(0o755)
        path = bin_dir(shared, ["false"])
        path.chmod(0o755)
        (path / "apt-get").symlink_to(path / "false")
        result = run(path, as_another_user())
    finally:
        shutil.rmtree(shared)
    assert result.returncode == 1, result.stderr
    assert "installing them takes root (this user is not root and cannot use sudo)" in result.stderr
    assert (
        "apt-get install -y redis-server redis-tools nginx chromium openssl iproute2 nodejs npm"
        in result.stderr
    )
    assert "Installing" not in result.stdout
