"""Real redis-server processes for the tests: one server, or a three-master cluster."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import redis

from support.ports import free_cluster_port, free_port
from support.waiting import wait_until

__all__ = ["RedisServer", "RedisCluster"]


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


class RedisServer:
    """A redis-server on a free loopback port, in its own directory, with no persistence
    unless ``extra`` arguments ask for it. ``stop`` and ``start`` restart it on the same port."""

    def __init__(self, *extra: str, port: Optional[int] = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install redis-server")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-"))
        self.extra = extra
        self.log = self.dir / "redis.log"
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        cmd += ["--appendonly", "no", "--dir", str(self.dir), *self.extra]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_until(
                lambda: _answers(client),
                timeout=10,
                message=f"redis-server on port {self.port} did not answer",
            )
        except AssertionError:
            self.stop()
            raise RuntimeError(self.log.read_text(errors="replace")[-2000:]) from None
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)

    def client_list(self) -> List[Dict[str, str]]:
        """Redis's ``CLIENT LIST``: one dict of fields (``name``, ``cmd``, ``sub``...) a connection."""
        client = self.client()
        try:
            return list(client.client_list())
        finally:
            client.close()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RedisCluster:
    """Three masters built with ``redis-server --cluster-enabled yes`` and ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        options = ["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"]
        options += ["--cluster-config-file", "nodes.conf"]
        self.nodes = [RedisServer(*options, port=free_cluster_port()) for _ in range(3)]
        create = ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60)
        wait_until(self._ok, timeout=30, message="the cluster did not reach cluster_state:ok", interval=0.2)

    def _ok(self) -> bool:
        for node in self.nodes:
            client = node.client()
            try:
                if client.cluster("info")["cluster_state"] != "ok":
                    return False
            finally:
                client.close()
        return True

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
