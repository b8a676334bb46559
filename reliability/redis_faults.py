"""Redis faults for scenarios 2-4: a Redis with AOF that can be SIGKILLed and restarted, a TCP
proxy that makes Redis unreachable on demand, and a primary/replica pair under Sentinel.

Every process here is started by a test and stopped by it, by PID (``stop()`` methods, called
from fixtures' ``finally``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import redis

from testkit.support import RedisServer, answers, free_port, wait_for

# -- a Redis that persists with AOF ---------------------------------------------------------


class AofRedis(RedisServer):
    """A redis-server with ``appendonly yes`` and ``appendfsync everysec`` (up to ~1 s of
    acknowledged writes may be lost to a crash), which the test kills and restarts in place."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, extra=["--appendonly", "yes", "--appendfsync", "everysec"])

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final fsync - what a power cut or the OOM killer does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def restart(self) -> None:
        """Start again on the same port and directory; Redis replays its AOF before answering."""
        self.start()


# -- a TCP proxy that can cut Redis off ------------------------------------------------------


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to a Redis; :meth:`cut` drops every connection and refuses
    new ones (nothing listens on the port), :meth:`resume` listens again on the same port.

    Threads, not asyncio: the test itself stays synchronous, and a few dozen connections are
    all atomq opens.
    """

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._silent = threading.Event()
        self.accepted = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.1)  # the accept loop notices a cut within 0.1 s
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    resume = start

    def cut(self) -> None:
        """Make Redis unreachable: close the listener (connects are refused) and reset every
        open connection (clients see their reads fail at once)."""
        with self._lock:
            listener, self._listener = self._listener, None
            open_sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in open_sockets:
            _close(sock)

    def stop(self) -> None:
        self._silent.clear()
        self.cut()

    def go_silent(self) -> None:
        """A partition that drops packets: connections stay open and new ones are accepted,
        but nothing crosses (clients wait out their timeouts) until :meth:`heal`."""
        self._silent.set()

    def heal(self) -> None:
        """End :meth:`go_silent`. Nothing sent during the partition arrives: the connections
        that lived through it are reset (both ends gave up on them), new ones work."""
        with self._lock:
            open_sockets, self._sockets = self._sockets, set()
        for sock in open_sockets:
            _close(sock)
        self._silent.clear()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                if self._listener is not listener:  # cut while we connected
                    _close(client)
                    _close(upstream)
                    return
                self._sockets.update((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self._silent.is_set():
                    while self._silent.is_set() and source.fileno() != -1:
                        time.sleep(0.02)
                    # Nothing crosses a partition: these bytes are dropped with the connection.
                    # (Sending them once heal() has closed only one of the two sockets let a
                    # command a client had given up on reach Redis.)
                    break
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets.discard(source)
                self._sockets.discard(target)
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    # shutdown() first: it wakes a thread blocked in recv() on this socket, close() alone does not.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


# -- Sentinel ----------------------------------------------------------------------------------

#: The master name the scenario's sentinels monitor (what ATOMQ_REDIS_SENTINEL_MASTER names).
MASTER_NAME = "atomq-primary"

#: Options of both data nodes (either may be primary): a replica syncs at once instead of
#: after the default 5 s wait for more replicas, and SIGTERM at the end of a test does not
#: wait for replicas to catch up.
NODE_OPTIONS = ("--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now")


class SentinelCluster:
    """A primary and a replica on loopback ports, watched by ``sentinels`` Sentinel processes
    (the Debian ``redis-sentinel`` binary, or ``redis-server --sentinel`` without it)."""

    def __init__(self, directory: Path, sentinels: int = 1, down_after_ms: int = 2000) -> None:
        self.directory = directory
        self.count = sentinels
        self.down_after_ms = down_after_ms
        self.servers: list[RedisServer] = []
        self.sentinels: list[subprocess.Popen[bytes]] = []
        self.sentinel_ports: list[int] = []

    @property
    def addresses(self) -> str:
        """ATOMQ_REDIS_SENTINELS: ``host:port,...``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> SentinelCluster:
        primary = RedisServer(self.directory / "node-a", extra=list(NODE_OPTIONS)).start()
        self.servers.append(primary)
        replica = RedisServer(
            self.directory / "node-b", extra=[*NODE_OPTIONS, "--replicaof", "127.0.0.1", str(primary.port)]
        ).start()
        self.servers.append(replica)
        wait_for(lambda: self._link_up(replica), 20, 0.1, "the replica to sync with the primary")
        for index in range(self.count):
            self._start_sentinel(index, primary.port)
        wait_for(self._sees_replica, 30, 0.2, "the sentinels to discover the replica and each other")
        return self

    def _start_sentinel(self, index: int, primary_port: int) -> None:
        port = free_port()
        directory = self.directory / f"sentinel-{index}"
        directory.mkdir(parents=True, exist_ok=True)
        conf = directory / "sentinel.conf"  # Sentinel rewrites its file: one per sentinel, writable
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\nlogfile sentinel.log\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} {max(1, self.count // 2 + 1)}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} 20000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        binary = shutil.which("redis-sentinel")
        server = shutil.which("redis-server")
        assert binary or server, "redis-server is needed for the tests"
        command = [binary, str(conf)] if binary else [str(server), str(conf), "--sentinel"]
        self.sentinels.append(subprocess.Popen(command, start_new_session=True))
        self.sentinel_ports.append(port)
        wait_for(lambda: self._ping(port), 10, 0.05, f"sentinel on port {port}")

    def sentinel(self, index: int = 0) -> redis.Redis:
        return redis.Redis(port=self.sentinel_ports[index], socket_timeout=5, decode_responses=True)

    def master_port(self) -> int:
        """The primary's port as the first sentinel reports it."""
        client = self.sentinel()
        try:
            _host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return int(port)
        finally:
            client.close()

    def server_on(self, port: int) -> RedisServer:
        return next(server for server in self.servers if server.port == port)

    def failover(self) -> float:
        """``SENTINEL FAILOVER``: promote the replica. Returns seconds until every sentinel
        names the new primary and it accepts writes."""
        old = self.master_port()
        started = time.monotonic()
        client = self.sentinel()
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        finally:
            client.close()
        self.wait_for_new_master(old)
        return time.monotonic() - started

    def kill_primary(self) -> tuple[RedisServer, float]:
        """SIGKILL the primary; returns it (to restart) and seconds until the replica is promoted."""
        old = self.master_port()
        server = self.server_on(old)
        assert server.process is not None
        started = time.monotonic()
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)
        self.wait_for_new_master(old, timeout=60)
        return server, time.monotonic() - started

    def wait_for_new_master(self, old: int, timeout: float = 30) -> int:
        def promoted() -> int | None:
            ports = set()
            for index in range(self.count):
                client = self.sentinel(index)
                try:
                    ports.add(int(client.sentinel_get_master_addr_by_name(MASTER_NAME)[1]))
                except redis.RedisError:
                    return None
                finally:
                    client.close()
            if len(ports) != 1 or old in ports:
                return None
            port = ports.pop()
            writable = redis.Redis(port=port, socket_timeout=2)
            try:
                return port if writable.info("replication")["role"] == "master" else None
            except redis.RedisError:
                return None
            finally:
                writable.close()

        port: int = wait_for(promoted, timeout, 0.1, "the sentinels to promote the replica")
        return port

    def stop(self) -> None:
        for process in self.sentinels:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for server in self.servers:
            server.stop()

    @staticmethod
    def _link_up(server: RedisServer) -> bool:
        client = server.client()
        try:
            return client.info("replication").get("master_link_status") == "up"
        finally:
            client.close()

    def _sees_replica(self) -> bool:
        for index in range(self.count):
            client = self.sentinel(index)
            try:
                replicas = client.execute_command("SENTINEL", "REPLICAS", MASTER_NAME)
            finally:
                client.close()
            if not any(_flags(entry) == "slave" for entry in replicas):
                return False
            # With several sentinels a failover needs a majority: each must know the others.
            client = self.sentinel(index)
            try:
                peers = client.execute_command("SENTINEL", "SENTINELS", MASTER_NAME)
            finally:
                client.close()
            if len(peers) < self.count - 1:
                return False
        return True

    @staticmethod
    def _ping(port: int) -> bool:
        return answers(redis.Redis(port=port, socket_connect_timeout=0.5))


def _flags(entry: object) -> str:
    """The ``flags`` of one SENTINEL REPLICAS entry (a dict, or a flat list on older clients)."""
    if isinstance(entry, dict):
        return str(entry.get("flags", ""))
    if isinstance(entry, list):
        fields = dict(zip(entry[::2], entry[1::2], strict=False))
        return str(fields.get("flags", ""))
    return ""
