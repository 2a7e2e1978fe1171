"""gunicorn settings for long-lived Server-Sent Event streams.

``gunicorn -c gunicorn.conf.py`` serves the example app; pass another app as the first
argument (``gunicorn -c gunicorn.conf.py myproject:app``) to serve yours.
"""

import os

# A server hook: a stopping worker ends its streams at once, so clients resume elsewhere.
# It also refuses gunicorn's own HTTP/2 (--http-protocols h2): terminate HTTP/2 at a proxy
# (docs/nginx-http2.conf) and serve HTTP/1.1 here.
from flask_sse_ext.gunicorn import post_worker_init  # noqa: F401

wsgi_app = "example_app:app"
bind = os.environ.get("GUNICORN_BIND", f"127.0.0.1:{os.environ.get('PORT', '8000')}")
# One greenlet per connection: a stream costs kilobytes, not a thread or a process.
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Each open stream holds one connection (and one file descriptor) for as long as it lasts.
worker_connections = int(os.environ.get("GUNICORN_WORKER_CONNECTIONS", "10000"))
# The gevent worker notifies the arbiter from its own loop, so a stream never looks stuck.
timeout = 30
# A stopping worker ends its streams within a second (post_worker_init); this bounds the rest.
graceful_timeout = 10
keepalive = 5
accesslog = "-"
# Log lines (access and error) with '?token=...' or '?ticket=...' show '[redacted]'.
logger_class = "flask_sse_ext.gunicorn.RedactingLogger"
