"""Hosts simulated on this machine, for scenarios that lose a whole host.

How a host is simulated
-----------------------
A :class:`Network` is a Linux bridge in the root network namespace holding the first address of
a /24 of ``10.213.0.0/16`` that no interface on the machine uses (chosen under a file lock, so
parallel runs get different subnets); Redis listens there. A :class:`Host` is a network
namespace of its own (``aq-<run>-<host>``) with a veth pair: one end, ``eth0``, inside the
namespace with the host's address, the other in the root namespace, plugged into the bridge.
The host's processes (``atomq worker --count N``: a supervisor, its workers, its scheduler,
any job's child) are started with ``ip netns exec``, so the host's processes are exactly the
processes in its namespace: ``ip netns pids`` lists them, whoever forked them and whatever their
process group, which is how the faults reach every one of them:

* :meth:`Host.kill_all`: SIGKILL to every process of the host (a power cut, a kernel panic);
* :meth:`Host.freeze` / :meth:`Host.thaw`: SIGSTOP / SIGCONT to every process (a VM paused
  by its hypervisor, a long stop-the-world stall, a laptop lid): sockets stay open, timers
  run on, nothing the host sends or answers happens meanwhile;
* :meth:`Host.link_down` / :meth:`Host.link_up`: the root-side end of the veth down / up (a
  cable pulled): packets in both directions are dropped while the host's processes run on.
  The host sees its own link lose carrier, so new connections fail at once ("No route to
  host") while commands already sent wait for their reply until the link is back (TCP
  retransmits) or their socket timeout ends them.

What it does not simulate
-------------------------
* Separate kernels, clocks and disks: every host shares this machine's clock (no skew, no
  clock jumps), its page cache and its files (the ledger, SQLite, logs are on one disk and
  reachable from every host, also while a host is "cut off"), its CPU and memory (a busy host
  slows the others down).
* Anything between hosts but a cut of the host's own link: no latency, loss, reordering,
  asymmetric partitions (A reaches Redis but not B), bandwidth limits, or a silent cut
  farther away (carrier up, packets dropped, every connection attempt hanging until its
  timeout); the bridge is an ideal switch.
* Process and mount isolation: PIDs, users and files are the machine's (``ip netns exec``
  only gives the host its own /sys); a host's processes see everyone else's.
* A host coming back after a kill: a killed host stays dead here; a new host (a new
  namespace, new names) stands in for a replaced machine.

Everything created is removed by :meth:`Host.cleanup` and :meth:`Network.destroy`, which
scenarios call from fixture finalizers (by PID and by name: nothing else is touched).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

#: The private range simulated networks take a /24 from.
SUPERNET = ipaddress.ip_network("10.213.0.0/16")

#: Held while a run picks and claims a subnet, so two runs never take the same one.
LOCK_PATH = Path("/tmp/atomq-reliability-hosts.lock")  # noqa: S108 - a lock shared by runs on purpose

#: Seconds a host has to stop after SIGTERM before everything left in it is SIGKILLed.
STOP_GRACE = 10.0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def unavailable() -> str | None:
    """Why hosts cannot be simulated here (not root, no ``ip``), or None when they can."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "simulated hosts need the ip command (iproute2)"
    return None


def _used_third_octets() -> set[int]:
    """Third octets of every 10.213.x.0/24 an interface or route of this machine already uses."""
    used: set[int] = set()
    for args in (("-4", "-o", "addr", "show"), ("-4", "route", "show", "table", "all")):
        for word in _ip(*args).stdout.split():
            address = word.split("/")[0]
            with contextlib.suppress(ValueError):
                ip = ipaddress.ip_address(address)
                if ip in SUPERNET:
                    used.add(int(ip.packed[2]))
    return used


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _state(pid: int) -> str:
    """The process state letter (R, S, T, Z...), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


@dataclass
class Network:
    """A bridge in the root namespace with its own /24: the LAN the hosts and Redis share."""

    token: str
    octet: int
    bridge: str
    hosts: int = 0

    @classmethod
    def create(cls) -> Network:
        """Pick a free /24 (under a lock shared by every run) and bring the bridge up on it."""
        token = secrets.token_hex(3)
        bridge = f"aqb{token}"
        LOCK_PATH.touch(exist_ok=True)
        with open(LOCK_PATH) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            free = sorted(set(range(1, 255)) - _used_third_octets())
            if not free:
                raise RuntimeError(f"no free /24 left in {SUPERNET} for a simulated network")
            octet = random.choice(free)  # noqa: S311 - spreads parallel runs, not a secret
            network = cls(token, octet, bridge)
            _ip("link", "add", bridge, "type", "bridge")
            try:
                _ip("addr", "add", f"{network.gateway}/24", "dev", bridge)
                _ip("link", "set", bridge, "up")
            except subprocess.CalledProcessError:
                _ip("link", "del", bridge, check=False)
                raise
        return network

    @property
    def gateway(self) -> str:
        """The root namespace's address on this network (where Redis listens)."""
        return f"10.213.{self.octet}.1"

    def address(self, index: int) -> str:
        """The address of the ``index``-th host (from 0)."""
        return f"10.213.{self.octet}.{10 + index}"

    def host(self, name: str) -> Host:
        """A new host on this network (call :meth:`Host.create` to bring it up)."""
        host = Host(self, name, self.hosts, self.address(self.hosts))
        self.hosts += 1
        return host

    def destroy(self) -> None:
        """Remove the bridge (hosts are cleaned up on their own)."""
        _ip("link", "del", self.bridge, check=False)


@dataclass
class Host:
    """A network namespace with a veth into the network, and the processes started in it."""

    network: Network
    name: str
    index: int
    address: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    frozen: bool = False
    cut_off: bool = False
    created: bool = False

    @property
    def namespace(self) -> str:
        return f"aq-{self.network.token}-{self.name}"

    @property
    def veth(self) -> str:
        """The root-side end of the host's veth pair (at most 15 characters: a kernel limit)."""
        return f"aqv{self.network.token}-{self.index}"

    def create(self) -> Host:
        """Create the namespace and its link, with the host's address and loopback up."""
        _ip("netns", "add", self.namespace)
        self.created = True
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.namespace)
        _ip("link", "set", self.veth, "master", self.network.bridge, "up")
        _ip("-n", self.namespace, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.namespace, "link", "set", "eth0", "up")
        _ip("-n", self.namespace, "link", "set", "lo", "up")
        return self

    # -- processes ---------------------------------------------------------------------------

    def start(self, argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        """Run ``argv`` inside the host (``ip netns exec`` execs it: the pid is the program's)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process.log_path = str(log_path)  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def worker(self, count: int, env: dict[str, str], log_path: Path, *extra: str) -> subprocess.Popen[bytes]:
        """``atomq worker --count COUNT --name host-NAME`` inside the host."""
        return self.start(
            [*atomq_command(), "worker", "--count", str(count), "--name", f"host-{self.name}", *extra],
            env,
            log_path,
        )

    def pids(self) -> list[int]:
        """Every live process of the host (``ip netns pids``: whatever its parent or group)."""
        if not self.created:
            return []
        listed = _ip("netns", "pids", self.namespace, check=False).stdout.split()
        return [pid for pid in map(int, listed) if _alive(pid)]

    def signal_all(self, sig: int) -> list[int]:
        """Send ``sig`` to every process of the host once; returns the pids it went to."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def kill_all(self, timeout: float = 10.0) -> list[int]:
        """SIGKILL every process of the host, again until none is left (a process may fork
        while the first round goes out); returns every pid killed."""
        killed: list[int] = []
        deadline = time.monotonic() + timeout
        while True:
            pids = self.signal_all(signal.SIGKILL)
            killed += [pid for pid in pids if pid not in killed]
            if not pids:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name}: processes {pids} survive SIGKILL")
            time.sleep(0.02)
        self._reap()
        self.frozen = False
        return killed

    def freeze(self, timeout: float = 10.0) -> list[int]:
        """SIGSTOP every process of the host, until every one of them is stopped (one forked
        during the first round is caught by the next); returns the pids stopped."""
        stopped: list[int] = []
        deadline = time.monotonic() + timeout
        self.frozen = True
        while True:
            pids = self.pids()
            running = [pid for pid in pids if _state(pid) not in ("T", "t")]
            if not running:
                return stopped
            for pid in running:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                if pid not in stopped:
                    stopped.append(pid)
            if time.monotonic() > deadline:
                raise RuntimeError(f"host {self.name}: processes {running} do not stop")
            time.sleep(0.01)

    def thaw(self) -> list[int]:
        """SIGCONT every process of the host."""
        self.frozen = False
        return self.signal_all(signal.SIGCONT)

    def link_down(self) -> None:
        """Cut the host off the network: its veth's root-side end goes down."""
        _ip("link", "set", self.veth, "down")
        self.cut_off = True

    def link_up(self) -> None:
        """Plug the host back in."""
        _ip("link", "set", self.veth, "up")
        self.cut_off = False

    def stop(self, grace: float = STOP_GRACE) -> None:
        """SIGTERM what the host was started with (a warm shutdown), then SIGKILL everything
        still in it after ``grace`` seconds. A frozen host is thawed and a cut-off one plugged
        back in first, so its workers can give their jobs back rather than wait out the grace."""
        if self.frozen:
            self.thaw()
        if self.cut_off:
            self.link_up()
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill_all()

    def _reap(self) -> None:
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def cleanup(self, grace: float = STOP_GRACE) -> None:
        """Stop every process, then delete the namespace and the link. Safe to call twice."""
        if not self.created:
            return
        try:
            self.stop(grace)
        finally:
            _ip("netns", "del", self.namespace, check=False)
            _ip("link", "del", self.veth, check=False)
            self.created = False

    @staticmethod
    def log(process: subprocess.Popen[bytes]) -> str:
        return Path(process.log_path).read_text(errors="replace")  # type: ignore[attr-defined]


def atomq_command() -> list[str]:
    """The ``atomq`` console script of the running interpreter's environment."""
    script = Path(sys.executable).with_name("atomq")
    return [str(script)] if script.exists() else [sys.executable, "-m", "atomq"]
