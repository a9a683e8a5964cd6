"""The multi-hypervisor test bed: several hypervisor hosts on this machine that Ansible and
libvirt reach over SSH like real ones (docs/development.md, "The multi-hypervisor test bed").

One Debian root filesystem is built once per machine with ``debootstrap`` (cached under a
stamp of its package list).  Each hypervisor is then:

- its own root filesystem: an overlay (the cached root filesystem read-only below, the
  hypervisor's own writable layer above), so it has its own ``/etc``, libvirt state, pools and
  ``/etc/batchvirt``;
- its own network namespace with a veth pair to this machine: the host end has ``.1``, the
  hypervisor ``.2`` of its own /30 in 198.18.0.0/15 (RFC 2544 benchmarking range; nothing
  outside the veths this bed creates is ever addressed);
- its own mount, PID, UTS and IPC namespaces (``unshare``), chrooted into its root filesystem,
  whose PID 1 (``/sbin/bvt-init``) starts virtlogd, libvirtd and sshd with their init scripts.

Everything is plain ``ip netns``/``unshare``/``chroot``/overlayfs: no container engine, no
image registry, no daemon of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

CACHE_DIR = os.environ.get("BVT_HV_ROOTFS_CACHE", "/var/cache/batchvirt-test/hvroot")
MIRROR = os.environ.get("BVT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# what a bare Debian hypervisor gets before the hypervisor role runs: SSH, Python for Ansible,
# and the role's own packages, read from the role (so the role finds them installed: no apt run
# against the mirror from inside the bed, and a package the role adds can never be missing here;
# the role's install path is covered where apt is real, molecule)
_ROLE_VARS = os.path.join(os.path.dirname(__file__), "..", "..", "roles", "hypervisor", "vars", "Debian.yml")


def _role_packages() -> List[str]:
    with open(_ROLE_VARS, encoding="utf-8") as fh:
        role = yaml.safe_load(fh)
    return list(role["__farm_hypervisor_packages"]) + list(role["__farm_hypervisor_sysv_packages"])


PACKAGES = ["openssh-server", "python3", *_role_packages(), "iproute2", "xorriso"]
# bump when the post-debootstrap configuration below changes
LAYOUT = "2"
NET_PREFIX = "198.18"

INIT = """#!/usr/bin/python3
# PID 1 of a test-bed hypervisor: start the daemons like a sysv boot would, then reap orphans.
import os, subprocess, sys, time
for cmd in (["service", "virtlogd", "start"], ["service", "libvirtd", "start"], ["service", "ssh", "start"]):
    subprocess.run(cmd, stdin=subprocess.DEVNULL, check=False)
sys.stdout.flush()
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(1)
"""

SSHD_CONFIG = """# batchvirt test bed: root logs in with the bed's key only
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
HostKey /etc/ssh/ssh_host_ed25519_key
"""

# no cgroups inside the bed (its /sys is read-only and has no cgroup mounts); no AppArmor; no
# private /dev per guest (libvirt's own mount namespace cannot make a PTY for the serial console
# inside the bed's, so a guest would not start)
QEMU_CONF = """cgroup_controllers = [ ]
security_driver = "none"
namespaces = [ ]
"""


def _run(cmd: List[str], **kwargs) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def,type-arg]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return proc


def stamp() -> str:
    return hashlib.sha256(" ".join([SUITE, MIRROR, LAYOUT, *PACKAGES]).encode()).hexdigest()[:16]


def build_rootfs(cache_dir: str = CACHE_DIR) -> str:
    """Return the cached root filesystem, building it first when its stamp is missing."""
    target = os.path.join(cache_dir, stamp())
    done = target + ".done"
    os.makedirs(cache_dir, exist_ok=True)
    with open(os.path.join(cache_dir, ".lock"), "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(done):
            return target
        shutil.rmtree(target, ignore_errors=True)
        work = target + ".build"
        shutil.rmtree(work, ignore_errors=True)
        # debootstrap's resolver takes the first of alternatives (libvirt-daemon-system-systemd,
        # systemd-sysv): the packages come from apt inside the new root instead, which honours
        # the sysv init scripts asked for
        _run(["debootstrap", "--variant=minbase", SUITE, work, MIRROR], timeout=1500)
        _write(os.path.join(work, "usr/sbin/policy-rc.d"), "#!/bin/sh\nexit 101\n", 0o755)
        install = (
            'mount -t proc proc "$1/proc" && exec chroot "$1" env DEBIAN_FRONTEND=noninteractive '
            "sh -c 'apt-get update -q && apt-get install -q -y --no-install-recommends \"$@\" && apt-get clean' sh "
            + " ".join(PACKAGES)
        )
        _run(["unshare", "--mount", "--fork", "sh", "-c", install, "install", work], timeout=1500)
        os.unlink(os.path.join(work, "usr/sbin/policy-rc.d"))
        _configure_rootfs(work)
        os.rename(work, target)
        with open(done, "w", encoding="utf-8") as fh:
            fh.write(" ".join(PACKAGES) + "\n")
        return target


def _write(path: str, text: str, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, mode)


def _configure_rootfs(root: str) -> None:
    _write(os.path.join(root, "sbin/bvt-init"), INIT, 0o755)
    _write(os.path.join(root, "etc/ssh/sshd_config.d/batchvirt-testbed.conf"), SSHD_CONFIG)
    with open(os.path.join(root, "etc/libvirt/qemu.conf"), "a", encoding="utf-8") as fh:
        fh.write("\n# batchvirt test bed\n" + QEMU_CONF)
    # libvirt's default NAT network needs dnsmasq and iptables, which a bare hypervisor lacks
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(root, "etc/libvirt/qemu/networks/autostart/default.xml"))
    for name in os.listdir(os.path.join(root, "etc/ssh")):
        if name.startswith("ssh_host_"):
            os.unlink(os.path.join(root, "etc/ssh", name))
    # debootstrap leaves the package lists out: clean apt caches to keep the cache small
    shutil.rmtree(os.path.join(root, "var/cache/apt/archives"), ignore_errors=True)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)


@dataclass
class Hypervisor:
    """One hypervisor host of the bed."""

    index: int
    base: str  # the bed's directory
    rootfs: str  # the shared lower layer
    proc: Optional[subprocess.Popen] = field(default=None, repr=False)  # type: ignore[type-arg]

    @property
    def name(self) -> str:
        return f"hv{self.index}"

    @property
    def netns(self) -> str:
        return f"bvt-mhv{self.index}"

    @property
    def veth(self) -> str:
        return f"bvtmhv{self.index}"

    @property
    def host_address(self) -> str:
        return f"{NET_PREFIX}.{self.index}.1"

    @property
    def address(self) -> str:
        return f"{NET_PREFIX}.{self.index}.2"

    @property
    def dir(self) -> str:
        return os.path.join(self.base, self.name)

    @property
    def root(self) -> str:
        """The hypervisor's root filesystem as seen from this machine."""
        return os.path.join(self.dir, "root")

    def path(self, path: str) -> str:
        """A path of the hypervisor, as seen from this machine."""
        return os.path.join(self.root, path.lstrip("/"))

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, authorized_key: str) -> str:
        """Mount, configure and boot the hypervisor; return its known_hosts line."""
        self.remove()
        for sub in ("upper", "work", "root"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        _run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.rootfs},upperdir={self.dir}/upper,workdir={self.dir}/work",
                self.root,
            ]
        )
        _write(self.path("etc/hostname"), self.name + "\n")
        _write(self.path("etc/hosts"), f"127.0.0.1 localhost\n{self.address} {self.name}\n")
        _write(self.path("root/.ssh/authorized_keys"), authorized_key.strip() + "\n", 0o600)
        os.chmod(self.path("root/.ssh"), 0o700)
        hostkey = self.path("etc/ssh/ssh_host_ed25519_key")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name, "-f", hostkey])
        with open(hostkey + ".pub", encoding="utf-8") as fh:
            known = f"{self.address} {' '.join(fh.read().split()[:2])}\n"

        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "link", "add", self.veth, "type", "veth", "peer", "name", "eth0", "netns", self.netns])
        _run(["ip", "addr", "add", f"{self.host_address}/30", "dev", self.veth])
        _run(["ip", "link", "set", self.veth, "up"])
        ns = ["ip", "netns", "exec", self.netns]
        _run([*ns, "ip", "link", "set", "lo", "up"])
        _run([*ns, "ip", "addr", "add", f"{self.address}/30", "dev", "eth0"])
        _run([*ns, "ip", "link", "set", "eth0", "up"])
        # the bed's whole range through this machine: every host end (198.18.M.1) is an address of
        # this machine, so a daemon of the controller bound to one of them (the farm's slurmctld,
        # its image server) is reachable from every hypervisor and from the guests' user-mode
        # networks; the hypervisors still cannot reach each other (no forwarding here)
        _run([*ns, "ip", "route", "add", f"{NET_PREFIX}.0.0/15", "via", self.host_address])
        boot = (
            'set -e; R="$1"; mount -t proc proc "$R/proc"; mount -t sysfs -o ro sysfs "$R/sys"; '
            'mount --rbind /dev "$R/dev"; mount -t tmpfs -o mode=755 tmpfs "$R/run"; '
            'mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"; hostname "$2"; exec chroot "$R" /sbin/bvt-init'
        )
        log = open(os.path.join(self.dir, "console.log"), "ab")  # noqa: SIM115 - kept by the process
        self.proc = subprocess.Popen(
            [
                *ns,
                "unshare",
                "--mount",
                "--uts",
                "--ipc",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "sh",
                "-c",
                boot,
                "boot",
                self.root,
                self.name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return known

    @property
    def init_pid(self) -> int:
        """This machine's PID of the hypervisor's PID 1."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children", encoding="utf-8") as fh:
            return int(fh.read().split()[0])

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """Run a command inside the hypervisor (its namespaces and root), not over SSH."""
        cmd = ["nsenter", "-t", str(self.init_pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--", *argv]
        if check:
            return _run(cmd, timeout=120)
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)

    def stop_daemons(self) -> None:
        """The hypervisor goes away: its sshd and libvirtd stop (the host and its address stay)."""
        self.exec("service", "ssh", "stop")
        self.exec("service", "libvirtd", "stop")

    def start_daemons(self) -> None:
        self.exec("service", "libvirtd", "start")
        self.exec("service", "ssh", "start")

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until sshd accepts connections and libvirtd's socket exists."""
        deadline = time.monotonic() + timeout
        sock = self.path("run/libvirt/libvirt-sock")
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: see {self.dir}/console.log")
            if (
                self._sshd_listening()
                and self.exec("test", "-S", "/run/libvirt/libvirt-sock", check=False).returncode == 0
            ):
                return
            time.sleep(0.3)
        raise RuntimeError(f"{self.name}: sshd/libvirtd not ready after {timeout}s; socket {sock}")

    def _sshd_listening(self) -> bool:
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "ss", "-Hltn", "sport", "= :22"],
            capture_output=True,
            text=True,
            check=False,
        )
        return bool(out.stdout.strip())

    def remove(self) -> None:
        """Stop the hypervisor and remove everything of it (also leftovers of a crashed run)."""
        if self.proc is not None and self.proc.poll() is None:
            # unshare --fork ignores SIGTERM while it waits; killing it kills the namespace's
            # PID 1 (--kill-child), and with it every process of the hypervisor
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        # leftovers of a crashed run: processes still in the namespace
        pids = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True, check=False)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "link", "delete", self.veth], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "delete", self.netns], capture_output=True, check=False)
        for _attempt in range(50):
            if not os.path.ismount(self.root):
                break
            subprocess.run(["umount", self.root], capture_output=True, check=False)
            if os.path.ismount(self.root):
                time.sleep(0.2)
        if os.path.ismount(self.root):
            subprocess.run(["umount", "-l", self.root], capture_output=True, check=False)
        if not os.path.ismount(self.root):
            shutil.rmtree(self.dir, ignore_errors=True)


def _remove_stale_beds(keep: str) -> None:
    """Unmount and remove the beds of sessions that were killed before their teardown
    (the network namespaces and veths, fixed names, are removed by each ``Hypervisor.start``)."""
    parent = os.path.dirname(keep)
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        mounts = [line.split()[1] for line in fh]
    stale = set()
    for mount in mounts:
        rel = os.path.relpath(mount, parent)
        parts = rel.split(os.sep)
        if (
            len(parts) == 3
            and parts[0].startswith("bvt-mhv-")
            and parts[2] == "root"
            and parts[0] != os.path.basename(keep)
        ):
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
            stale.add(os.path.join(parent, parts[0]))
    for path in stale:
        if not any(m.startswith(path + os.sep) for m in mounts if os.path.ismount(m)):
            shutil.rmtree(path, ignore_errors=True)


class HypervisorBed:
    """Three (``count``) hypervisors, an SSH key and the client configuration that reaches them."""

    def __init__(self, base: str, count: int = 3, rootfs: Optional[str] = None) -> None:
        self.base = base
        self.rootfs = rootfs or build_rootfs()
        self.hypervisors = [Hypervisor(i, base, self.rootfs) for i in range(1, count + 1)]
        self.key = os.path.join(base, "id_ed25519")
        self.known_hosts = os.path.join(base, "known_hosts")
        self.ssh_config = os.path.join(base, "ssh_config")
        self.ssh_wrapper = os.path.join(base, "ssh")

    def start(self) -> None:
        _remove_stale_beds(self.base)
        os.makedirs(self.base, exist_ok=True)
        if not os.path.exists(self.key):
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "batchvirt-testbed", "-f", self.key])
        with open(self.key + ".pub", encoding="utf-8") as fh:
            pub = fh.read()
        known = [hv.start(pub) for hv in self.hypervisors]
        _write(self.known_hosts, "".join(known), 0o600)
        _write(
            self.ssh_config,
            "Host *\n"
            f"  IdentityFile {self.key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n  ConnectTimeout 5\n",
            0o600,
        )
        # libvirt's ssh transport runs `command` (default ssh) with its own arguments
        _write(self.ssh_wrapper, f'#!/bin/sh\nexec ssh -F {self.ssh_config} "$@"\n', 0o755)
        for hv in self.hypervisors:
            hv.wait_ready()

    def uri(self, hv: Hypervisor) -> str:
        """The libvirt URI a controller uses for ``hv``."""
        return f"qemu+ssh://root@{hv.address}:22/system?command={self.ssh_wrapper}"

    def uri_template(self) -> str:
        """``uri_template`` of the inventory plugin: user and port from the hosts' variables."""
        return (
            "qemu+ssh://{{ ansible_user }}@{{ ansible_host }}:{{ ansible_port }}/system"
            f"?command={self.ssh_wrapper}"
        )

    def inventory(self, group_vars: Optional[Dict[str, object]] = None) -> Dict[str, object]:
        """The hypervisors as an Ansible inventory: group ``hypervisors``, SSH settings as group variables."""
        return {
            "all": {
                "children": {
                    "hypervisors": {
                        "hosts": {hv.name: {"ansible_host": hv.address} for hv in self.hypervisors},
                        "vars": {
                            "ansible_connection": "ssh",
                            "ansible_user": "root",
                            "ansible_port": 22,
                            "ansible_python_interpreter": "/usr/bin/python3",
                            "ansible_ssh_common_args": f"-F {self.ssh_config}",
                            **(group_vars or {}),
                        },
                    }
                }
            }
        }

    def remove(self) -> None:
        for hv in self.hypervisors:
            hv.remove()
        shutil.rmtree(self.base, ignore_errors=True)
