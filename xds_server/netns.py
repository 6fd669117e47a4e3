"""Network namespaces joined by veth pairs: pods on one host, without Docker.

A pod is a named network namespace (`ip netns`) with loopback up; a veth pair joins two
namespaces (or a namespace and the host) with an address at each end. Commands run
inside with `ip netns exec`. Everything made here is removed by `delete`; names carry a
per-run prefix so that runs never touch namespaces they did not create. Needs root.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    """This machine cannot make network namespaces (not root, or no `ip`)."""


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    return None


def _run(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass
class Namespace:
    """One named network namespace with loopback up."""

    name: str
    links: list[str] = field(default_factory=list)  # host-side veth ends to remove

    @classmethod
    def create(cls, name: str, nameserver: str | None = None) -> Namespace:
        """The namespace `name`; with `nameserver`, the programs run in it (`ip netns
        exec`) resolve names there, as a pod uses its cluster's DNS."""
        why = available()
        if why is not None:
            raise NetnsUnavailable(why)
        _run(["ip", "netns", "add", name])
        namespace = cls(name)
        try:
            namespace.ip("link", "set", "lo", "up")
            if nameserver is not None:
                # `ip netns exec` mounts /etc/netns/NAME/resolv.conf over /etc/resolv.conf.
                namespace.etc.mkdir(parents=True, exist_ok=True)
                (namespace.etc / "resolv.conf").write_text(f"nameserver {nameserver}\n")
        except Exception:
            namespace.delete()
            raise
        return namespace

    @property
    def etc(self) -> Path:
        """Files `ip netns exec` puts over /etc's inside this namespace."""
        return Path("/etc/netns") / self.name

    def argv(self, *command: str) -> list[str]:
        """`command` as run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def run(self, *command: str) -> str:
        return _run(self.argv(*command))

    def ip(self, *args: str) -> str:
        return _run(["ip", "-n", self.name, *args])

    def call(self, function: Callable[[], T], timeout: float = 30.0) -> T:
        """`function()` run in this namespace: in a thread of its own that joins it
        (setns applies to one thread), so sockets it opens live there."""
        result: list = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.name}", "rb") as handle:
                    if _libc().setns(handle.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), f"setns into {self.name} failed")
                result.append((True, function()))
            except BaseException as exc:  # handed to the caller
                result.append((False, exc))

        thread = threading.Thread(target=inside, name=f"netns-{self.name}", daemon=True)
        thread.start()
        thread.join(timeout)
        if not result:
            raise TimeoutError(f"a call in namespace {self.name} took over {timeout:.0f}s")
        ok, value = result[0]
        if not ok:
            raise value
        return value

    def delete(self) -> None:
        for link in self.links:
            subprocess.run(["ip", "link", "del", link], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        shutil.rmtree(self.etc, ignore_errors=True)


def _veth(a: Namespace, b: Namespace) -> tuple[str, str]:
    """A veth pair with one end in each namespace (removed with either): its ends' names."""
    tag = uuid.uuid4().hex[:8]
    a_end, b_end = f"va{tag}", f"vb{tag}"
    _run(
        [
            "ip",
            "link",
            "add",
            a_end,
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            b_end,
            "netns",
            b.name,
        ]
    )
    return a_end, b_end


def connect(a: Namespace, a_address: str, b: Namespace, b_address: str, prefix: int = 24) -> None:
    """A veth pair between two namespaces, `a_address`/`prefix` in `a` and `b_address` in
    `b`, both up (the link is removed with either namespace)."""
    a_end, b_end = _veth(a, b)
    for namespace, end, address in ((a, a_end, a_address), (b, b_end, b_address)):
        namespace.ip("addr", "add", f"{address}/{prefix}", "dev", end)
        namespace.ip("link", "set", end, "up")


BRIDGE = "br0"


def add_bridge(hub: Namespace, address: str, prefix: int = 24) -> None:
    """A bridge in `hub` with `address` on it: the pods' network and their gateway."""
    hub.ip("link", "add", BRIDGE, "type", "bridge")
    hub.ip("addr", "add", f"{address}/{prefix}", "dev", BRIDGE)
    hub.ip("link", "set", BRIDGE, "up")


def join_bridge(
    pod: Namespace, address: str, hub: Namespace, gateway: str, prefix: int = 24
) -> None:
    """`pod` on `hub`'s bridge at `address`, its default route through `gateway` (the
    bridge's address), as a pod on a node's bridge."""
    inside, outside = _veth(pod, hub)
    pod.ip("addr", "add", f"{address}/{prefix}", "dev", inside)
    pod.ip("link", "set", inside, "up")
    pod.ip("route", "add", "default", "via", gateway)
    hub.ip("link", "set", outside, "master", BRIDGE)
    hub.ip("link", "set", outside, "up")


def run_prefix() -> str:
    """A prefix for the names of one run's namespaces (short: interface names are 15
    bytes at most)."""
    return f"xds{uuid.uuid4().hex[:6]}"
