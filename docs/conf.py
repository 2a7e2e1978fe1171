"""Sphinx configuration: MyST Markdown pages, the Pallets ("flask") theme, autodoc.

Sphinx rather than MkDocs: autodoc builds the API reference from the docstrings, so it cannot
drift from the code; the Pallets theme matches Flask's own docs, as other Flask extensions do;
and MyST lets every page stay Markdown, like the README.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (needs ``pip install -e ".[docs]"``).
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc documents this checkout, not an installed copy

import flask_sse_ext  # noqa: E402

project = "flask-sse-ext"
copyright = "2026, the flask-sse-ext contributors"
release = flask_sse_ext.__version__
version = ".".join(release.split(".")[:2])
REPOSITORY = "https://github.com/flask-sse-ext/flask-sse-ext"

extensions = ["sphinx.ext.autodoc", "myst_parser", "pallets_sphinx_themes"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "examples"]
myst_heading_anchors = 3
# tasklist: the migration checklist; the others are common MyST syntax a page may use.
myst_enable_extensions = ["tasklist", "colon_fence", "deflist"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True

html_theme = "flask"
html_title = f"flask-sse-ext {release}"
html_context = {
    "project_links": [],
}
html_sidebars = {
    "index": ["project.html", "localtoc.html", "searchbox.html"],
    "**": ["localtoc.html", "relations.html", "searchbox.html"],
}
singlehtml_sidebars = {"index": ["project.html", "localtoc.html"]}
html_static_path = []
html_show_sourcelink = False
# The docs build offline: no intersphinx, no remote images.
version_banner = False
