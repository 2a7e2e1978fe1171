"""The fixtures live in the ``support`` package (``support/fixtures.py``); see its docstring."""

import pytest

# Before any support module is imported: its asserts report the values they compared.
pytest.register_assert_rewrite("support")

pytest_plugins = ["support.fixtures", "support.redis_ha"]
