"""Real redis-server processes for the tests: one server, or a three-master cluster."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import redis

from conftest_ports import free_cluster_port, free_port


def _wait_ping(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    try:
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {port} did not answer")
    finally:
        client.close()


class RedisServer:
    """A redis-server on a free loopback port, in its own directory, with no persistence."""

    def __init__(self, *extra: str, port: Optional[int] = None) -> None:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not on PATH: apt-get install redis-server")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="redis-"))
        self.extra = extra
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.dir), *self.extra,
        ]  # fmt: skip
        self.log = self.dir / "redis.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_ping(self.port)
        except RuntimeError:
            self.stop()
            raise RuntimeError(self.log.read_text(errors="replace")[-2000:]) from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def client(self) -> "redis.Redis[bytes]":
        return redis.Redis(port=self.port)

    def client_list(self) -> List[dict]:
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
        options = ("--cluster-enabled", "yes", "--cluster-node-timeout", "2000",
                   "--cluster-config-file", "nodes.conf")  # fmt: skip
        self.nodes = [RedisServer(*options, port=free_cluster_port()) for _ in range(3)]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            infos = [n.client().cluster("info") for n in self.nodes]
            if all(i["cluster_state"] == "ok" for i in infos):
                return
            time.sleep(0.2)
        raise RuntimeError("the cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()
