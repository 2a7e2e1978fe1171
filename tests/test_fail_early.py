"""A configuration that cannot work fails at ``init_app``, saying what to do, not at the first
request; a migrated flask-sse app that still sets ``REDIS_URL`` is told so."""

from __future__ import annotations

import re
import sys
from typing import Any, Dict

import pytest
from flask import Flask

from flask_sse_ext import SSE, Publisher
from flask_sse_ext.state import get_state


def fresh_app(config: Dict[str, Any]) -> Flask:
    app = Flask(__name__)
    app.config.update(TESTING=True, SECRET_KEY="test-secret", **config)
    return app


@pytest.mark.parametrize("module", ["redis", "hiredis"])
def test_redis_url_without_the_redis_extra_fails_at_init_app(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: with SSE_REDIS_URL set and hiredis missing, every stream answered 500
    (ModuleNotFoundError at the first request) instead of a clear error at init_app."""
    # None in sys.modules is how Python itself marks a module that cannot be imported.
    monkeypatch.setitem(sys.modules, module, None)
    app = fresh_app({"SSE_REDIS_URL": "redis://127.0.0.1:6379/0"})
    expected = f"SSE_REDIS_URL needs the '{module}' package: pip install \"flask-sse-ext[redis]\""
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        SSE(app)
    assert "sse" not in app.extensions and "sse" not in app.blueprints


@pytest.mark.parametrize("module", ["redis", "hiredis"])
def test_publisher_without_the_redis_extra_fails_with_the_install_line(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: ``Publisher(redis_url)`` in a Celery worker without the extra raised a bare
    ModuleNotFoundError; it now says what to install, as init_app does."""
    monkeypatch.setitem(sys.modules, module, None)
    expected = f"Publisher(redis_url) needs the '{module}' package: pip install \"flask-sse-ext[redis]\""
    with pytest.raises(RuntimeError, match=re.escape(expected)):
        Publisher("redis://127.0.0.1:6379/0")


def test_metrics_path_without_prometheus_client_fails_at_init_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    app = fresh_app({"SSE_METRICS_PATH": "/metrics"})
    with pytest.raises(RuntimeError, match=re.escape('pip install "flask-sse-ext[prometheus]"')):
        SSE().init_app(app)


def test_redis_url_without_sse_redis_url_warns_with_the_fix() -> None:
    """Regression: a migrated app's REDIS_URL was silently ignored; a Celery publisher
    "worked" (exit 0) and reached no stream."""
    app = fresh_app({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    with pytest.warns(UserWarning, match=re.escape("app.config['SSE_REDIS_URL'] = app.config['REDIS_URL']")):
        SSE(app)
    assert get_state(app).settings.redis_url is None  # the warning says what actually happens


@pytest.mark.parametrize(
    "config, options",
    [
        ({"SSE_REDIS_URL": "redis://127.0.0.1:6379/0"}, {}),  # the fix the warning gives
        ({"SSE_REDIS_URL": None}, {}),  # the in-process broker, chosen on purpose
        ({}, {"redis_url": "redis://127.0.0.1:6379/0"}),
    ],
)
def test_no_warning_once_the_choice_is_explicit(config: Dict[str, Any], options: Dict[str, Any]) -> None:
    # filterwarnings = error: any warning here fails the test.
    app = fresh_app({"REDIS_URL": "redis://127.0.0.1:6379/0", **config})
    SSE(app, **options)
    expected = config.get("SSE_REDIS_URL", options.get("redis_url"))
    assert get_state(app).settings.redis_url == expected
