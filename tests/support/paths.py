"""Where the project and its tests live."""

from pathlib import Path

__all__ = ["ROOT", "TESTS"]

#: The repository: ``flask_sse_ext``, ``example_app``, ``gunicorn.conf.py``, ``docs``.
ROOT = Path(__file__).resolve().parent.parent.parent
#: ``tests``, on ``sys.path`` (``pythonpath`` in setup.cfg) so that ``support`` imports.
TESTS = ROOT / "tests"
