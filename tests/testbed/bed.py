"""Registers what a test creates (domains, pools, volumes, paths, processes, namespaces)
and removes all of it afterwards, in reverse order, whatever happened in the test."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from typing import Callable, List, Optional

from tests.testbed.slotpool import SLOTS_DIR, SLOTS_POOL

try:
    import libvirt
except ImportError:  # unit-only environments
    libvirt = None  # type: ignore[assignment]


def _quiet(*_args: object) -> None:
    """libvirt prints every error to stderr unless a handler is registered."""


if libvirt is not None:
    libvirt.registerErrorHandler(_quiet, None)


# What TestBed.name() makes ("bvt-<stem>-<6 hex>") and the slot names tests build from one
# ("bvt<stem><6 hex>-slot-NN"): nothing else on a test machine is named so.
TEST_DOMAIN = re.compile(r"^bvt-?[a-z0-9-]*?[0-9a-f]{6}[a-z]?(-slot-[0-9]+)?$")


def remove_leftover_domains(uri: str) -> List[str]:
    """Remove the test slots (domain, overlay, seed ISO, console log) that an earlier run killed
    before its cleanup left behind, e.g. a CI job stopped at its time limit on a machine that runs
    the next job too: a leftover slot keeps its address and SSH port, which the slot module rightly
    refuses to give a new slot. Returns the names removed. Run one integration session per
    machine at a time: this would remove a running session's slots."""
    bed = TestBed(uri)
    names = [d.name() for d in bed.conn.listAllDomains(0) if TEST_DOMAIN.match(d.name())]
    for name in names:
        bed.slot(name)
    errors = bed.close()
    if errors:
        raise RuntimeError(f"could not remove the leftover test slots {names}: {errors}")
    return names


class TestBed:
    """One test's resources. Use the ``testbed`` fixture rather than this class directly."""

    __test__ = False  # not a pytest test class

    def __init__(self, uri: Optional[str] = None) -> None:
        self.uri = uri
        self.tmp = tempfile.mkdtemp(prefix="bvt-")
        self._cleanups: List[Callable[[], None]] = [lambda: shutil.rmtree(self.tmp, ignore_errors=True)]
        self._conn = None

    # -- naming -------------------------------------------------------------------------
    @staticmethod
    def name(stem: str) -> str:
        return f"bvt-{stem}-{secrets.token_hex(3)}"

    # -- libvirt ------------------------------------------------------------------------
    @property
    def conn(self):  # type: ignore[no-untyped-def]
        if self._conn is None:
            self._conn = libvirt.open(self.uri)
        return self._conn

    def domain(self, name: str) -> str:
        def remove() -> None:
            try:
                dom = self.conn.lookupByName(name)
            except libvirt.libvirtError:
                return
            if dom.isActive():
                try:
                    dom.destroy()
                except libvirt.libvirtError:
                    pass
            try:
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
            except libvirt.libvirtError:
                pass

        self._cleanups.append(remove)
        return name

    def slot(self, name: str) -> str:
        """A slot in the slots pool: its domain, overlay, seed ISO and console log."""

        def refresh() -> None:
            try:
                self.conn.storagePoolLookupByName(SLOTS_POOL).refresh(0)
            except libvirt.libvirtError:
                pass

        self.path(os.path.join(SLOTS_DIR, f"{name}.qcow2"))
        self.path(os.path.join(SLOTS_DIR, f"{name}-seed.iso"))
        self.path(f"/var/log/libvirt/qemu/{name}-console.log")
        self.cleanup(refresh)
        return self.domain(name)

    def pool(self, name: str) -> str:
        def remove() -> None:
            try:
                pool = self.conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                return
            if pool.isActive():
                for vol in pool.listAllVolumes():
                    try:
                        vol.delete()
                    except libvirt.libvirtError:
                        pass
                pool.destroy()
            try:
                pool.undefine()
            except libvirt.libvirtError:
                pass

        self._cleanups.append(remove)
        return name

    def volume(self, pool: str, name: str) -> str:
        def remove() -> None:
            try:
                self.conn.storagePoolLookupByName(pool).storageVolLookupByName(name).delete()
            except libvirt.libvirtError:
                pass

        self._cleanups.append(remove)
        return name

    def network(self, name: str) -> str:
        def remove() -> None:
            try:
                net = self.conn.networkLookupByName(name)
            except libvirt.libvirtError:
                return
            if net.isActive():
                net.destroy()
            net.undefine()

        self._cleanups.append(remove)
        return name

    # -- host ---------------------------------------------------------------------------
    def path(self, path: str) -> str:
        def remove() -> None:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.unlink(path)

        self._cleanups.append(remove)
        return path

    def process(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> subprocess.Popen[bytes]:
        def remove() -> None:
            if proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

        self._cleanups.append(remove)
        return proc

    def netns(self, name: str) -> str:
        self._cleanups.append(lambda: subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False))
        return name

    def cleanup(self, func: Callable[[], None]) -> None:
        """Register any other cleanup."""
        self._cleanups.append(func)

    def close(self) -> List[str]:
        errors = []
        while self._cleanups:
            func = self._cleanups.pop()
            try:
                func()
            except Exception as exc:  # keep cleaning up; report at the end
                errors.append(repr(exc))
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return errors
