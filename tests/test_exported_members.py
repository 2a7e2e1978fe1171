"""The public API is what ``flask_sse_ext.__all__`` says, derived from the module itself."""

from __future__ import annotations
import __future__

import inspect
import types

import flask_sse_ext
from flask_sse_ext import serving


def public_members() -> set[str]:
    """The package's public attributes, but the submodules its imports bind and a
    ``from __future__`` feature."""
    return {
        name
        for name, value in vars(flask_sse_ext).items()
        if not name.startswith("_")
        and not isinstance(value, (types.ModuleType, type(__future__.annotations)))
    }


def test_all_lists_every_public_member_once() -> None:
    assert len(flask_sse_ext.__all__) == len(set(flask_sse_ext.__all__))
    assert sorted(flask_sse_ext.__all__) == sorted(public_members())


def test_every_exported_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from flask_sse_ext import *", namespace)  # AttributeError for a name that is missing
    for name in flask_sse_ext.__all__:
        assert namespace[name] is getattr(flask_sse_ext, name)


def test_serving_all_lists_every_public_function_and_class() -> None:
    """Regression: ``serving.warn_memory_broker`` (imported by endpoint.py) was public but not
    in ``serving.__all__``."""
    defined = {
        name
        for name, value in vars(serving).items()
        if not name.startswith("_")
        and (inspect.isfunction(value) or inspect.isclass(value))
        and value.__module__ == serving.__name__
    }
    assert defined <= set(serving.__all__), sorted(defined - set(serving.__all__))
