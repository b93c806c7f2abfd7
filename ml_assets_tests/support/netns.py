"""Hosts on one machine for the multi-host test: Linux network namespaces joined by a
bridge, each with its own address, interfaces and port space, plus a TCP forwarder that
publishes the root namespace's loopback-only servers (PostgreSQL, Redis, RabbitMQ, the
MLflow server) on the bridge, and haproxy from Debian's packages.

    with Network() as net:                    # bridge mlb<pid>, subnet 10.a.b.0/24
        w1 = net.add_host("w1")               # namespace mlh-<pid>-w1 at 10.a.b.2
        net.forward({5432: ("127.0.0.1", 5432)}, log=path)  # <net.hub>:5432 -> ...
        argv = w1.run(["python", "-m", ...])  # `ip netns exec mlh-<pid>-w1 python ...`
        net.kill_host(w1)                     # SIGKILL all its processes, unplug it

Names and the subnet derive from this process's id, so parallel runs (pytest-xdist
workers, CI jobs on one machine) never collide; a leftover of a killed run with the same
id is removed first. Everything is removed on close, also after a failure.
Needs root (CAP_NET_ADMIN) and iproute2; `unavailable()` says what is missing.

`python -m ml_assets_tests.support.netns forward HOST PORT=TARGET_HOST:TARGET_PORT...`
is the forwarder itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ml_assets_tests.support.processes import LoggedProcess


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


def unavailable() -> str | None:
    """Why namespaces cannot be made here (None: they can)."""
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN)"
    probe = f"mlh-probe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def ensure_haproxy() -> str | None:
    """haproxy's path, installing Debian's package first when running as root with
    apt-get; None when it is missing and cannot be installed here."""
    found = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
    if found or os.geteuid() != 0 or shutil.which("apt-get") is None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "haproxy"]
    if subprocess.run(install, env=env, capture_output=True, timeout=300).returncode != 0:
        # The package lists may be missing (slim images): fetch them once, then retry.
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
        subprocess.run(install, env=env, capture_output=True, timeout=300)
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)


def _subnet_in_use(prefix: str) -> bool:
    routes = _ip("-4", "route", "show", "table", "all").stdout
    return f"{prefix}." in routes


@dataclass
class Host:
    """One namespace: its name, its address on the bridge, the bridge end of its veth."""

    role: str
    namespace: str
    address: str
    veth: str

    def run(self, argv: list[str]) -> list[str]:
        """`argv` as a command executed inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def pids(self) -> list[int]:
        done = _ip("netns", "pids", self.namespace, check=False)
        return [int(p) for p in done.stdout.split()]


@dataclass
class Network:
    """A bridge in the root namespace and hosts (namespaces) plugged into it."""

    tag: int = field(default_factory=os.getpid)
    hosts: dict[str, Host] = field(default_factory=dict)
    processes: list[LoggedProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.bridge = f"mlb{self.tag}"
        # 10.a.b.0/24 from the pid (a in 100-199); the next free one if a route has it.
        for step in range(200):
            n = (self.tag + step * 7919) % 25600
            prefix = f"10.{100 + n // 256}.{n % 256}"
            if not _subnet_in_use(prefix):
                break
        else:
            raise RuntimeError("no free 10.x.y.0/24 subnet for the test network")
        self.prefix = prefix
        self.hub = f"{prefix}.1"  # the root namespace's address on the bridge
        self._remove_leftovers()
        # A fixed address: a bridge otherwise takes the lowest of its ports' addresses,
        # and unplugging that port changes it under the hosts' ARP caches, which stalls
        # every other host's connections to the hub for seconds.
        mac = "02:" + ":".join(f"{(self.tag >> s) & 0xFF:02x}" for s in (24, 16, 8, 0)) + ":01"
        _ip("link", "add", self.bridge, "address", mac, "type", "bridge")
        _ip("addr", "add", f"{self.hub}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _namespace(self, role: str) -> str:
        return f"mlh-{self.tag}-{role}"

    def _remove_leftovers(self) -> None:
        """Namespaces and bridges of runs killed before their cleanup (their process is
        gone, or this process now has its id)."""
        def stale(pid: str) -> bool:
            return pid.isdigit() and (int(pid) == self.tag or not Path(f"/proc/{pid}").exists())

        for line in _ip("netns", "list", check=False).stdout.splitlines():
            name = line.split(" ")[0]
            if name.startswith("mlh-") and stale(name.split("-")[1]):
                self._delete_namespace(name)
        for line in _ip("-br", "link", "show", "type", "bridge", check=False).stdout.splitlines():
            name = line.split(" ")[0]
            if name.startswith("mlb") and stale(name[3:]):
                _ip("link", "del", name, check=False)

    def add_host(self, role: str) -> Host:
        """A namespace with loopback and one veth on the bridge at the next address."""
        namespace = self._namespace(role)
        address = f"{self.prefix}.{len(self.hosts) + 2}"
        veth = f"mlv{self.tag}{len(self.hosts)}"
        _ip("netns", "add", namespace)
        host = Host(role, namespace, address, veth)
        self.hosts[role] = host
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def forward(self, targets: dict[int, tuple[str, int]], log: Path) -> LoggedProcess:
        """A forwarder in the root namespace: <hub>:port -> host:port for each entry of
        `targets` (the servers listen on loopback only and are not reconfigured for the
        test; they see the forwarder as a local client). Returns once it listens."""
        rules = [f"{port}={host}:{target}" for port, (host, target) in targets.items()]
        offset = log.stat().st_size if log.exists() else 0  # the log is appended to
        process = LoggedProcess([sys.executable, "-m", "ml_assets_tests.support.netns",
                                 "forward", self.hub, *rules], os.environ, log)
        self.processes.append(process)
        deadline = time.monotonic() + 30
        while "listening" not in process.log()[offset:]:
            if not process.running or time.monotonic() > deadline:
                raise RuntimeError(f"forwarder did not start:\n{process.log(2000)}")
            time.sleep(0.05)
        return process

    def stop_forwarder(self) -> None:
        """Stop what forward() started (its connections close with it)."""
        for process in self.processes:
            process.stop(signal.SIGTERM, timeout=10, group=True)

    def signal_host(self, host: Host, sig: int) -> list[int]:
        """Send `sig` to every process in `host` (SIGSTOP: the machine hangs; SIGCONT:
        it goes on). The pids signalled."""
        pids = host.pids()
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        return pids

    def kill_host(self, host: Host, timeout: float = 30) -> list[int]:
        """Lose `host` as a machine is lost: SIGKILL every process in it, then unplug it
        from the bridge (its veth deleted). The killed pids."""
        killed = self.signal_host(host, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in killed):
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes of {host.namespace} survived SIGKILL")
            time.sleep(0.05)
        _ip("link", "del", host.veth, check=False)
        return killed

    def _delete_namespace(self, namespace: str) -> None:
        pids = _ip("netns", "pids", namespace, check=False).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        _ip("netns", "del", namespace, check=False)

    def close(self) -> None:
        """Kill every process started in the hosts and by forward(), delete the
        namespaces (their veths go with them) and the bridge."""
        self.stop_forwarder()
        for host in self.hosts.values():
            self._delete_namespace(host.namespace)
        _ip("link", "del", self.bridge, check=False)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except (OSError, IndexError):
        return True


# --- the forwarder ---------------------------------------------------------------------


async def _pipe(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        # One side gone (a killed host's sockets are closed by its kernel): close the
        # other, so the server sees its client leave (RabbitMQ requeues its tasks).
        writer.close()


async def _forward(host: str, rules: list[str]) -> None:
    """Listen on host:PORT for each rule PORT=TARGET_HOST:TARGET_PORT."""
    import asyncio

    def handler(target: str, port: int):
        async def connect(client_reader, client_writer) -> None:
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(
                    target, port)
            except OSError:
                client_writer.close()
                return
            await asyncio.gather(_pipe(client_reader, upstream_writer),
                                 _pipe(upstream_reader, client_writer))
        return connect

    servers = []
    for rule in rules:
        port, target = rule.split("=")
        target_host, target_port = target.rsplit(":", 1)
        servers.append(await asyncio.start_server(
            handler(target_host, int(target_port)), host, int(port)))
    print(f"listening on {host}: {', '.join(rules)}", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


if __name__ == "__main__":
    import asyncio

    if len(sys.argv) < 4 or sys.argv[1] != "forward":
        sys.exit("usage: python -m ml_assets_tests.support.netns forward HOST "
                 "PORT=TARGET_HOST:TARGET_PORT...")
    asyncio.run(_forward(sys.argv[2], sys.argv[3:]))
