"""Real hosts for tests: network namespaces joined by a bridge.

Each host is a namespace with one veth into a bridge that lives in a
namespace of its own (in the root namespace, bridged traffic would pass the
machine's iptables, whose FORWARD policy may drop it). Hosts are addressed
from 198.18.0.0/15, the range reserved for network benchmarks. Cutting a host
off sets its bridge port down: no process is killed and no FIN or RST is
sent, as when a machine loses power or its network.

Needs root and iproute2; :func:`available` says whether this machine has
both. Everything made is deleted by :meth:`Network.close`, which the fixture
calls even when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from support.procs import Proc, child_env
from support.supervision import Supervisor

SUBNET = "198.18.{net}.{host}"


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "network namespaces need iproute2's ip command"
    probe = f"rkprobe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"ip netns add failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Host:
    """One host: its namespace, its address, and the processes started in it."""

    name: str
    namespace: str
    address: str
    port: str  # the veth end in the bridge's namespace
    procs: list[Proc] = field(default_factory=list)
    supervisors: list[Supervisor] = field(default_factory=list)

    def prefix(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def endpoint(self, port: int) -> str:
        return f"tcp://{self.address}:{port}"

    def start(self, name: str, args: list[str], log_dir: Path, env: dict[str, str] | None = None) -> Proc:
        """Run ``args`` on this host (``ip netns exec`` execs in place, so the
        process's PID is the program's own)."""
        proc = Proc(f"{self.name}-{name}", [*self.prefix(), *args], log_dir, env or child_env())
        self.procs.append(proc)
        return proc

    def supervise(self, root: Path, env: dict[str, str]) -> Supervisor:
        """Run supervisord -n on a copy of the checkout's supervisord.conf in
        ``root`` (a new folder), on this host."""
        sup = Supervisor(root, env, fresh=True, prefix=self.prefix())
        self.supervisors.append(sup)
        return sup


class Network:
    """A switch and the hosts plugged into it."""

    def __init__(self, net: int = 0) -> None:
        self.net = net
        self.tag = uuid.uuid4().hex[:5]
        self.switch = f"rk{self.tag}sw"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        """Plug a new host in; its address is 198.18.NET.(count + 1)."""
        index = len(self.hosts) + 1
        namespace = f"rk{self.tag}h{index}"
        veth, port = f"rkv{self.tag}{index}", f"rkp{self.tag}{index}"
        _ip("netns", "add", namespace)
        self._made.append(namespace)
        _ip("link", "add", veth, "netns", namespace, "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        address = SUBNET.format(net=self.net, host=index)
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", veth)
        _ip("-n", namespace, "link", "set", veth, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        host = Host(name, namespace, address, port)
        self.hosts[name] = host
        return host

    def attach_root(self) -> str:
        """Plug this (the root) namespace in too, as 198.18.NET.254, so that
        the test process itself can reach every host; that address."""
        veth, port = f"rkv{self.tag}r", f"rkp{self.tag}r"
        _ip("link", "add", veth, "type", "veth", "peer", "name", port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        address = SUBNET.format(net=self.net, host=254)
        _ip("addr", "add", f"{address}/24", "dev", veth)
        _ip("link", "set", veth, "up")
        return address

    def cut(self, host: Host) -> None:
        """Cut ``host`` off: its port goes down; nothing is told."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def restore(self, host: Host) -> None:
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def close(self) -> None:
        """Stop every process started on a host (by PID), then delete every
        namespace made. Never raises."""
        for host in self.hosts.values():
            for sup in host.supervisors:
                try:
                    sup.shutdown()
                except Exception:  # noqa: BLE001 - teardown goes on whatever one supervisord did
                    if sup.popen.poll() is None:
                        sup.popen.kill()
            for proc in host.procs:
                try:
                    proc.stop()
                except Exception:  # noqa: BLE001 - teardown goes on whatever one process did
                    pass
        for namespace in reversed(self._made):
            # The switch goes last; with it go the peers of every veth, the
            # root namespace's own included.
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)
        self._made.clear()
