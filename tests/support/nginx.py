"""A real nginx reverse proxy in front of a gunicorn server, for the proxy tests.

nginx runs in the foreground (``daemon off``) on a free loopback port, with a generated config,
pid file, logs and temp paths in a directory of its own, so it never touches /etc/nginx or
/var/lib/nginx and several can run at once. Nothing turns ``proxy_buffering`` off: the stream
is live because the app sends ``X-Accel-Buffering: no``.

``NginxServer(port, site=DOCS_SITE)`` runs docs/nginx.conf as it is (HTTP/1.1 to gunicorn,
``X-Forwarded-*``), with only its upstream and listen addresses changed; ``site=H2_SITE,
tls=(cert, key)`` runs docs/nginx-http2.conf (HTTP/2 over TLS) with the test's certificate.
Without ``site``:

- ``/``: nginx's own defaults (HTTP/1.0 to gunicorn, ``proxy_buffering on``), as in a bare
  ``proxy_pass`` someone else configured.
- ``/buffered/`` (``proxy_pass`` with a URI strips the prefix): the same plus
  ``proxy_ignore_headers X-Accel-Buffering``, so nginx buffers, as it would for an app that
  does not send the header. The control that shows the timing measurement can fail.
  ``proxy_hide_header`` would not do: it only keeps a header from the client (nginx never
  forwards ``X-Accel-*`` anyway) and nginx still acts on it.

Over HTTP/1.1 (chunked) nginx 1.22 passes each upstream chunk on soon even when it buffers, so
the control uses HTTP/1.0, where a buffered response waits for full buffers or the end.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Protocol, Tuple

from support.paths import ROOT
from support.ports import free_port
from support.waiting import wait_until

__all__ = ["DOCS_SITE", "H2_SITE", "NginxServer", "StartNginx"]

NGINX = "/usr/sbin/nginx"

CONFIG = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    default_type application/octet-stream;

{site}
}}
"""


SITE = """\
    upstream app {{
        server 127.0.0.1:{upstream_port};
    }}

    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        proxy_read_timeout 60s;

        # nginx's defaults: HTTP/1.0 to the upstream, proxy_buffering on.
        location / {{
            proxy_pass http://app;
        }}

        # The same, with the app's X-Accel-Buffering header ignored: nginx buffers.
        location /buffered/ {{
            proxy_ignore_headers X-Accel-Buffering;
            proxy_pass http://app/;
        }}
    }}
"""

#: The documented site config; NginxServer(..., site=DOCS_SITE) runs it as it is, with only
#: its upstream address and listen port changed.
DOCS_SITE = ROOT / "docs" / "nginx.conf"
#: The documented HTTP/2 site config (``listen 443 ssl http2``); run it with ``tls=``.
H2_SITE = ROOT / "docs" / "nginx-http2.conf"


class NginxServer:
    """nginx on a free loopback port, proxying to ``127.0.0.1:upstream_port``: the test
    locations above, or the server blocks of ``site`` (a file such as ``DOCS_SITE``)."""

    def __init__(
        self,
        upstream_port: int,
        site: Optional[Path] = None,
        timeout: float = 10.0,
        tls: Optional[Tuple[Path, Path]] = None,
    ) -> None:
        if not os.access(NGINX, os.X_OK):
            raise RuntimeError(f"{NGINX} is missing: apt-get install nginx")
        self.upstream_port = upstream_port
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-"))
        user = ""
        if os.geteuid() == 0:
            # As root nginx switches its worker to "nobody" (group "nobody", which Debian does
            # not have), and that user could not use our temp directory: keep this user.
            user = "user {} {};".format(
                pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
            )
        self.config = self.dir / "nginx.conf"
        if site is None:
            site_text = SITE.format(port=self.port, upstream_port=upstream_port)
        else:
            site_text = _adapt_site(site.read_text(), self.port, upstream_port, tls)
        self.config.write_text(CONFIG.format(user=user, dir=self.dir, site=site_text))
        self.stderr_path = self.dir / "stderr.log"
        error_log = str(self.dir / "error.log")
        cmd = [NGINX, "-p", f"{self.dir}/", "-c", str(self.config), "-e", error_log]
        with open(self.stderr_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._listens, timeout=timeout, message=f"nginx does not listen on port {self.port}")
        except (AssertionError, RuntimeError) as exc:
            self.stop()
            raise RuntimeError(f"{exc}\n{self.log()}") from None

    def _listens(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def log(self) -> str:
        """nginx's own output and error log, for assertion messages."""
        parts = []
        for path in (self.stderr_path, self.dir / "error.log"):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            # SIGTERM is nginx's fast shutdown: it does not wait for open streams.
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _adapt_site(text: str, port: int, upstream_port: int, tls: Optional[Tuple[Path, Path]] = None) -> str:
    """A site file with its upstream and listen address pointed at the test's ports (and, with
    ``tls``, its certificate and key at the test's)."""
    replaced = []
    for pattern, new in [
        (r"^(\s*server\s+)127\.0\.0\.1:8000;", rf"\g<1>127.0.0.1:{upstream_port};"),
        (r"^(\s*listen\s+)(?:80|443)\b", rf"\g<1>127.0.0.1:{port}"),
    ]:
        text, count = re.subn(pattern, new, text, flags=re.M)
        replaced.append(count)
    if replaced != [1, 1]:
        raise ValueError("a site file needs one 'server 127.0.0.1:8000;' and one 'listen 80' or 'listen 443'")
    # The site's own access log goes to the test's directory (nginx -p), not to /var/log/nginx.
    text = re.sub(r"^(\s*access_log\s+)/\S+", r"\g<1>site-access.log", text, flags=re.M)
    if tls is not None:
        for name, path in zip(("ssl_certificate", "ssl_certificate_key"), tls):
            text = re.sub(rf"^(\s*{name}\s+)\S+;", rf"\g<1>{path};", text, flags=re.M)
    return text


class StartNginx(Protocol):
    """The ``start_nginx`` fixture: nginx in front of a gunicorn port, stopped after the test."""

    def __call__(self, upstream_port: int, site: Optional[Path] = None) -> NginxServer: ...
