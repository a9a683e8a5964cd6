"""A star network of network namespaces for the BitTorrent tests and bench/distribution.py.

One "switch" namespace holds a bridge; every endpoint (image server, hypervisors) is its own
namespace joined to the bridge by a veth pair.  Addresses come from 198.18.0.0/15 (RFC 2544,
benchmarking) and exist ONLY inside these namespaces: nothing touches the host's interfaces or
any private range.  With ``rate_mbit`` each endpoint's link is shaped with ``tbf`` in both
directions (egress of the endpoint side = its uplink, egress of the switch side = its downlink).
"""

from __future__ import annotations

import os
import secrets
import subprocess
from typing import Callable, Dict, List, Optional

NET = "198.18"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _tc(ns: str, dev: str, rate_mbit: float) -> None:
    # burst: at least one ~10 ms worth of bytes (and >= 32 KiB) so tbf reaches its rate.
    burst = max(32 * 1024, int(rate_mbit * 1e6 / 8 / 100))
    subprocess.run(
        ["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
         "rate", f"{rate_mbit}mbit", "burst", str(burst), "latency", os.environ.get("BVT_TBF_LATENCY", "50ms")],
        check=True, capture_output=True,
    )  # fmt: skip


class NetLab:
    """Create with a cleanup registrar (``hostbed.cleanup``) so everything goes away."""

    def __init__(self, register: Callable[[Callable[[], None]], None], rate_mbit: Optional[float] = None) -> None:
        self.tag = secrets.token_hex(2)
        self.rate_mbit = rate_mbit
        self.switch = f"bvtsw{self.tag}"
        self.hosts: Dict[str, str] = {}  # namespace -> address
        self._namespaces: List[str] = []
        register(self.close)
        self._netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add(self, index: int) -> str:
        """Namespace number ``index`` (1..250) with address 198.18.0.<index>; returns its name."""
        ns = f"bvt{self.tag}h{index}"
        self._netns(ns)
        port = f"p{index}"
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", ns, "addr", "add", f"{NET}.0.{index}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        if self.rate_mbit:
            _tc(ns, "eth0", self.rate_mbit)
            _tc(self.switch, port, self.rate_mbit)
        self.hosts[ns] = f"{NET}.0.{index}"
        return ns

    @staticmethod
    def address(index: int) -> str:
        return f"{NET}.0.{index}"

    @staticmethod
    def prefix(ns: str) -> List[str]:
        """Command prefix that runs a command inside ``ns``."""
        return ["ip", "netns", "exec", ns]

    def pids(self) -> List[int]:
        pids: List[int] = []
        for ns in self._namespaces:
            out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, check=False).stdout
            pids.extend(int(p) for p in out.split())
        return pids

    def close(self) -> None:
        """Kill whatever still runs in the namespaces, then delete them."""
        import os
        import signal
        import time

        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        self._namespaces.clear()
