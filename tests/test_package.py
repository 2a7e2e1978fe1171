"""What users install is what is tested: the sdist and the wheel that ``python -m build``
makes pass ``twine check``, carry what the package needs, and the wheel, installed into a fresh
virtualenv, serves the Quickstart under gunicorn's gevent worker."""

from __future__ import annotations

import ast
import configparser
import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set

import pytest

import flask_sse_ext
from support.client import RawStream, request
from support.paths import ROOT
from support.ports import free_port
from support.server import Server
from support.waiting import wait_until

QUICKSTART = ROOT / "docs" / "examples" / "quickstart" / "app.py"


@dataclass
class Dist:
    sdist: Path
    wheel: Path
    log: str  # what the build printed


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Dist(sdist, wheel, build.stdout + build.stderr)


@pytest.fixture(scope="module")
def venv(dist: Dist, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (nothing from this environment) with ``<wheel>[gevent]`` installed."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    install = subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        + ["--no-input", f"{dist.wheel}[gevent]"],
        env=clean_env(),  # with this checkout on PYTHONPATH, pip would find it "already installed"
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    return path


def clean_env() -> dict[str, str]:
    """The environment without what points Python at this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run_in(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_twine_accepts_the_sdist_and_the_wheel(dist: Dist) -> None:
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", str(dist.sdist), str(dist.wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2, check.stdout


def test_the_sdist_carries_what_a_packager_needs(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    for needed in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "setup.cfg",
        "pyproject.toml",
        "flask_sse_ext/py.typed",
        "flask_sse_ext/static/sse-client.js",
        "flask_sse_ext/brokers/redis/scripts.py",
        "docs/conf.py",
        "docs/index.md",
        "tests/conftest.py",
    ):
        assert needed in names, needed
    assert not [name for name in names if "__pycache__" in name or name.startswith("docs/_build")]


def test_the_wheel_carries_the_package_and_its_metadata(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(wheel.read(metadata_name))
    for needed in (
        "flask_sse_ext/py.typed",
        "flask_sse_ext/static/sse-client.js",
        "flask_sse_ext/gunicorn.py",
    ):
        assert needed in names, needed
    assert any(n.endswith("LICENSE") and ".dist-info/" in n for n in names)
    # Regression: static/ (no __init__.py) was "Package 'flask_sse_ext.static' would be ignored".
    assert "would be ignored" not in dist.log, dist.log
    assert not any(n.startswith(("tests/", "docs/", "example_app/", "bench/")) for n in names)
    assert metadata["Version"] == flask_sse_ext.__version__
    assert metadata["License"] == "BSD-3-Clause"
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL") or [])
    assert set(urls) >= {"Documentation", "Source", "Changes", "Issues"}, urls
    assert all(url.startswith("https://") for url in urls.values())
    assert str(metadata.get_payload()).startswith("# flask-sse-ext")  # the README, as the index shows it


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(path: Path) -> Set[str]:
    """The modules ``path`` imports at module level, outside ``try`` blocks (where an optional
    import may fail), as absolute dotted names (``from .x import y`` gives ``pkg.x`` and
    ``pkg.x.y``, as ``y`` may be a module)."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: Set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def top_levels(paths: Iterable[Path]) -> Set[str]:
    return {name.split(".")[0] for path in paths for name in module_level_imports(path)}


def source_of(module: str) -> Optional[Path]:
    """The file of ``module`` when it is the package's or the example app's."""
    if module.split(".")[0] not in ("flask_sse_ext", "example_app"):
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def run_by_importing(start: Iterable[Path]) -> Set[Path]:
    """``start`` and every file of the package or the example app that importing them runs
    (a module's parent packages included), following module-level imports."""
    todo = list(start)
    seen: Set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in module_level_imports(path):
            parts = name.split(".")
            todo.extend(f for end in range(1, len(parts) + 1) if (f := source_of(".".join(parts[:end]))))
    return seen


def canonical(name: str) -> str:
    """A distribution's name as PEP 503 compares it (``Flask_Login`` is ``flask-login``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    """``gunicorn[gevent]>=21.2; python_version>'3'`` -> ``gunicorn``."""
    return canonical(re.split(r"[\s\[;<>=!~]", requirement.strip(), maxsplit=1)[0])


def distributions(tops: Iterable[str]) -> Dict[str, Set[str]]:
    """The installed distributions that provide each top-level module (none for the standard
    library and this checkout's own packages)."""
    providers = importlib.metadata.packages_distributions()
    return {top: {canonical(dist) for dist in providers.get(top, [])} for top in tops}


def imported_distributions() -> Set[str]:
    """The distributions the package imports at module level, outside ``try`` blocks."""
    tops = top_levels((ROOT / "flask_sse_ext").rglob("*.py")) - {"flask_sse_ext"}
    return set().union(*distributions(tops).values())


def test_every_imported_distribution_is_declared(dist: Dist) -> None:
    """Regression: signals.py imports blinker, which was not declared."""
    with zipfile.ZipFile(dist.wheel) as wheel:
        (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(wheel.read(metadata_name))
    required: List[str] = metadata.get_all("Requires-Dist") or []
    declared = {requirement_name(req) for req in required}
    assert "blinker" in declared
    missing = imported_distributions() - declared
    assert not missing, f"imported but not in install_requires or an extra: {missing}"


def declared_in_setup_cfg(*extras: str) -> Set[str]:
    """The distributions ``pip install ".[extras]"`` installs by name: install_requires and
    ``extras``, from setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    return {requirement_name(line) for line in lines if line.strip() and not line.strip().startswith("#")}


def test_the_example_extra_alone_serves_the_example_app() -> None:
    """The README's first command, ``pip install -e ".[example]" && gunicorn -c gunicorn.conf.py``:
    what the example app and the gunicorn config import (and the package modules that runs)
    is the standard library, this checkout, or a distribution the ``[example]`` extra installs."""
    declared = declared_in_setup_cfg("example")
    # The command itself, and the config's worker_class = "gevent".
    assert {"gunicorn", "gevent"} <= declared, declared
    files = run_by_importing([*(ROOT / "example_app").rglob("*.py"), ROOT / "gunicorn.conf.py"])
    assert ROOT / "flask_sse_ext" / "gunicorn.py" in files  # the scan follows the config's import
    tops = top_levels(files) - set(sys.stdlib_module_names) - {"flask_sse_ext", "example_app"}
    providers = distributions(tops)
    unknown = sorted(top for top in tops if not providers[top])
    assert not unknown, f"imported, not the standard library, and not installed: {unknown}"
    missing = {top: sorted(dists) for top, dists in providers.items() if not dists & declared}
    assert not missing, f"imported by the example app but not in install_requires or [example]: {missing}"


def test_the_quickstart_runs_from_the_installed_wheel(venv: Path, tmp_path: Path) -> None:
    app_dir = tmp_path / "project"
    app_dir.mkdir()
    shutil.copy(QUICKSTART, app_dir / "app.py")
    where = run_in(venv, "import flask_sse_ext; print(flask_sse_ext.__file__)", app_dir)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr  # not this checkout

    gunicorn = str(venv / "bin" / "gunicorn")
    port = free_port()
    args = [gunicorn, "-k", "gevent", "-b", f"127.0.0.1:{port}", "app:app"]
    if "--no-control-socket" in subprocess.run([gunicorn, "--help"], capture_output=True, text=True).stdout:
        args.insert(1, "--no-control-socket")  # gunicorn 25+ opens one at a fixed path otherwise
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(args, cwd=app_dir, env=clean_env(), stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:
        wait_until(server.listens, timeout=30, message=lambda: server.log(), interval=0.05)
        stream = RawStream(port, "/stream?channel=news")
        assert stream.status == 200
        assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert stream.chunk() == b"retry: 3000\n"
        status, body = request(port, "POST", "/hello")
        assert status == 200, body
        event_id = body["id"]
        expected = b'event: greeting\ndata: {"message":"Hello!"}\nid: ' + event_id.encode() + b"\n\n"
        assert stream.chunks(1)[0] == expected
        status, script = request(port, "GET", "/stream/static/sse-client.js")
        assert status == 200 and b"export function connect" in script
    finally:
        server.stop()


def test_the_installed_wheel_fails_early_without_the_redis_extra(venv: Path, tmp_path: Path) -> None:
    """Only ``[gevent]`` is installed: a Redis URL must fail at ``init_app`` with the line to run."""
    code = (
        "from flask import Flask\nfrom flask_sse_ext import SSE\n"
        "app = Flask('app')\napp.config['SSE_REDIS_URL'] = 'redis://127.0.0.1:6379/0'\nSSE(app)\n"
    )
    result = run_in(venv, code, tmp_path)
    assert result.returncode == 1
    assert "RuntimeError: SSE_REDIS_URL needs the 'redis' package" in result.stderr, result.stderr
    assert 'pip install "flask-sse-ext[redis]"' in result.stderr


def test_the_installed_version_is_the_package_version(venv: Path, tmp_path: Path) -> None:
    code = "import importlib.metadata as m, flask_sse_ext; print(m.version('flask-sse-ext'), flask_sse_ext.__version__)"
    result = run_in(venv, code, tmp_path)
    assert result.stdout.split() == [flask_sse_ext.__version__] * 2, result.stderr
