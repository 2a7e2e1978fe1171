"""The contrast for ``compression_bench.py``: ``ext_app`` behind a gzip middleware done the
usual way, one compressor per connection (flushed after every chunk, so nothing waits in it),
with the extension's own compression off. ``gunicorn -k gevent -w 1 gzip_per_client_app:app``.
"""

import zlib

from ext_app import app as flask_app


class _Gzipped:
    """A streaming body compressed chunk by chunk with this connection's own compressor."""

    def __init__(self, body):  # type: ignore[no-untyped-def]
        self.body = body
        self.compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def __iter__(self):  # type: ignore[no-untyped-def]
        for chunk in self.body:
            yield self.compressor.compress(chunk) + self.compressor.flush(zlib.Z_SYNC_FLUSH)
        yield self.compressor.flush()

    def close(self):  # type: ignore[no-untyped-def]
        close = getattr(self.body, "close", None)
        if close is not None:
            close()


class PerClientGzip:
    def __init__(self, wsgi_app):  # type: ignore[no-untyped-def]
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):  # type: ignore[no-untyped-def]
        if not environ.get("PATH_INFO", "").startswith("/stream") or "gzip" not in environ.get(
            "HTTP_ACCEPT_ENCODING", ""
        ):
            return self.wsgi_app(environ, start_response)

        def start(status, headers, exc_info=None):  # type: ignore[no-untyped-def]
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            return start_response(status, headers + [("Content-Encoding", "gzip")], exc_info)

        return _Gzipped(self.wsgi_app(environ, start))


flask_app.wsgi_app = PerClientGzip(flask_app.wsgi_app)  # type: ignore[method-assign]
app = flask_app
