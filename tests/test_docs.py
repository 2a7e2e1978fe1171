"""The documentation site builds with no warning, covers every public name and config key, and
its examples run; the README is a front page that works on a package index."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, Iterator, List, Set

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import flask_sse_ext
from flask_sse_ext.config import DEFAULTS
from flask_sse_ext.signals import event_published
from support.paths import ROOT

DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The HTML site, built as CI and Read the Docs build it: warnings are errors."""
    if importlib.util.find_spec("sphinx") is None:
        pytest.fail('Sphinx is missing: pip install -e ".[docs]" (scripts/test installs it)')
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    assert "WARNING" not in build.stderr, build.stderr
    return out


def inventory(site: Path) -> Set[str]:
    """The Python objects the site documents, read from its ``objects.inv``."""
    data = (site / "objects.inv").read_bytes()
    header_end = 0
    for _ in range(4):  # four text lines, then the zlib-compressed entries
        header_end = data.index(b"\n", header_end) + 1
    entries = zlib.decompress(data[header_end:]).decode().splitlines()
    return {line.split(" ", 1)[0] for line in entries if " py:" in line}


def test_every_public_name_has_an_api_entry(site: Path) -> None:
    documented = inventory(site)
    names = [*flask_sse_ext.__all__, "__version__"]
    missing = [name for name in names if f"flask_sse_ext.{name}" not in documented]
    assert not missing, (
        f"no API entry for {missing}: classes and functions in __all__ appear by themselves "
        "(docs/reference/api.md); a constant needs a '.. data::' entry there"
    )
    for method in ("init_app", "publish", "response", "authorize", "token_loader", "issue_token"):
        assert f"flask_sse_ext.SSE.{method}" in documented


def test_every_config_key_is_in_the_configuration_reference() -> None:
    page = (DOCS / "reference" / "configuration.md").read_text()
    rows = set(re.findall(r"^\| `(SSE_[A-Z0-9_]+)` \|", page, re.MULTILINE))
    missing = sorted(set(DEFAULTS) - rows)
    assert not missing, f"add a row for {missing} to the table in docs/reference/configuration.md"
    assert not rows - set(DEFAULTS), f"documented keys that config.py does not know: {rows - set(DEFAULTS)}"


def test_every_page_is_built(site: Path) -> None:
    """Pages added later (one guide per feature) are listed by the index's glob: none is left
    out of the navigation, and none needs an edit of the index."""
    for page in DOCS.glob("*.md"):
        assert (site / page.with_suffix(".html").name).is_file(), page


def test_testing_page_example_passes() -> None:
    """docs/testing.md shows this file whole; it must pass as it is shown."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", str(EXAMPLES / "testing")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout, run.stdout


@pytest.fixture(scope="module")
def recipe() -> Iterator[ModuleType]:
    """The cookbook's publish-after-commit recipe, loaded once (its SQLAlchemy hooks are global)."""
    spec = importlib.util.spec_from_file_location(
        "publish_after_commit", EXAMPLES / "cookbook" / "publish_after_commit.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    from sqlalchemy import event
    from sqlalchemy.orm import Session as SessionClass

    event.remove(SessionClass, "after_commit", module._publish_pending)
    event.remove(SessionClass, "after_soft_rollback", module._drop_pending)


@pytest.mark.parametrize("with_sql", [True, False], ids=["with-sql", "before-any-sql"])
def test_cookbook_publishes_after_commit_and_never_after_rollback(recipe: ModuleType, with_sql: bool) -> None:
    app = Flask(__name__)
    recipe.sse.init_app(app)
    published: List[Dict[str, Any]] = []

    def record(sender: Flask, **fields: Any) -> None:
        published.append(fields)

    engine = create_engine("sqlite://")
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
    with app.app_context(), event_published.connected_to(record, app), Session(engine) as session:
        if with_sql:
            session.execute(text("INSERT INTO orders (id) VALUES (1)"))
        recipe.publish_after_commit(session, {"order": 1}, event="order", channel="orders")
        assert published == []  # nothing before the commit
        session.commit()
        assert [p["channel"] for p in published] == ["orders"]

        recipe.publish_after_commit(session, {"order": 2}, event="order", channel="orders")
        if with_sql:
            session.execute(text("INSERT INTO orders (id) VALUES (2)"))
        session.rollback()
        session.commit()
        assert len(published) == 1  # the rolled-back event is gone for good
        assert session.execute(text("SELECT id FROM orders")).scalars().all() == ([1] if with_sql else [])


def quickstart_blocks(text: str) -> List[str]:
    return [block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "sse.publish(" in block]


def test_readme_quickstart_is_the_tested_example() -> None:
    """The README's Quickstart code is the file the wheel test serves, character for character."""
    example = (EXAMPLES / "quickstart" / "app.py").read_text()
    assert example in quickstart_blocks((ROOT / "README.md").read_text())


def test_readme_has_exactly_two_commands_first() -> None:
    readme = (ROOT / "README.md").read_text()
    first = re.search(r"```bash\n(.*?)```", readme, re.DOTALL)
    assert first is not None
    commands = [line for line in first.group(1).splitlines() if line and not line.startswith("#")]
    assert commands == ['pip install -e ".[example]" && gunicorn -c gunicorn.conf.py', "./scripts/test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "exec ./scripts/test\n" in ci


def test_readme_links_work_on_a_package_index() -> None:
    """A package index shows the README without the repository: every link and image is absolute."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert targets
    relative = [t for t in targets if not t.startswith("https://")]
    assert not relative, relative


def test_readme_docs_links_point_at_pages_that_exist(site: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    base = "https://flask-sse-ext.readthedocs.io/en/latest/"
    for page, anchor in re.findall(re.escape(base) + r"([a-z\-/]+\.html)(?:#([a-z0-9\-]+))?", readme):
        html = site / page
        assert html.is_file(), page
        if anchor:
            assert f'id="{anchor}"' in html.read_text(), f"{page}#{anchor}"
