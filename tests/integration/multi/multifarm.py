"""A real batch farm on the multi-hypervisor bed (tests/testbed/hypervisors.py): ``playbooks/site.yml``
run from this machine (the controller) against the bed's ``hypervisors`` group over SSH sets the
three hypervisors up, pre-stages the worker image on each (HTTP from this machine) and boots one
slot per hypervisor; the slots register with a slurmctld on this machine and run jobs.

The network (docs/development.md, "The multi-hypervisor test bed"):

- slurmctld and the image server listen on 198.18.1.1, the host end of hv1's veth: every
  hypervisor routes the bed's range through this machine, so they reach it from each
  hypervisor and from the guests' user-mode networks (QEMU connects out from the hypervisor);
- each slot's slurmd is reached at its hypervisor's address (198.18.N.2, port 6818), which the
  slot's user-mode network forwards to the guest (``network.forwards``).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import yaml

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file
from tests.testbed import slurmcli
from tests.testbed.ansible import LOCALHOST, ROOT, PlaybookResult, check_playbook, run_playbook
from tests.testbed.hypervisors import HypervisorBed
from tests.testbed.processes import read_pid, stop_pid

HERE = os.path.dirname(os.path.abspath(__file__))
FARM_PLAYBOOKS = os.path.join(ROOT, "tests", "integration", "farm", "playbooks")
SLURM_CONF_DIR = "/run/bvt-mhv-slurm"
SLURM_CONF = os.path.join(SLURM_CONF_DIR, "slurm.conf")
CTLD_PORT = 27837
HTTP_PORT = 27838
SLURMD_PORT = 6818
IDENTIFIER = "bvt-mworker"
ACCEPTING = ("idle", "allocated", "mixed", "completing")


class MultiFarmError(AssertionError):
    pass


def _check(result: PlaybookResult, what: str) -> PlaybookResult:
    return check_playbook(result, what, MultiFarmError, tail=8000)


def slurm(*argv: str, check: bool = True, timeout: float = 60) -> str:
    """A Slurm command against the bed farm's controller (its private slurm.conf)."""
    return slurmcli.run(SLURM_CONF, *argv, check=check, timeout=timeout, error=MultiFarmError)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass


@dataclass
class MultiFarm:
    bed: HypervisorBed
    tmp: str
    controller: str  # the address slurmctld and the image server listen on
    nodes: Dict[str, str] = field(default_factory=dict)  # hypervisor -> node (slot) name
    extravars: Dict[str, Any] = field(default_factory=dict)
    timings: Dict[str, float] = field(default_factory=dict)
    site: Optional[PlaybookResult] = None
    _http: Optional[http.server.ThreadingHTTPServer] = None

    # -- the batch system's view ----------------------------------------------------------
    def node_states(self) -> Dict[str, str]:
        out = slurm("sinfo", "-h", "-N", "-n", ",".join(self.nodes.values()), "-o", "%N %T", check=False)
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1].lower()
        return states

    def wait_accepting(self, timeout: float = 1200) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            states = self.node_states()
            if len(states) == len(self.nodes) and all(s.rstrip("*") in ACCEPTING for s in states.values()):
                return time.monotonic() - start
            time.sleep(3)
        consoles = ""
        for hv in self.bed.hypervisors:
            path = hv.path(f"/var/log/libvirt/qemu/{self.nodes[hv.name]}-console.log")
            with contextlib.suppress(OSError), open(path, encoding="utf-8", errors="replace") as fh:
                consoles += f"\n--- {hv.name} console\n" + fh.read()[-1500:]
        raise MultiFarmError(f"not every node accepts jobs after {timeout} s: {self.node_states()}{consoles}")

    def job(self, node: str, command: str, timeout: float = 600) -> subprocess.CompletedProcess:  # type: ignore[type-arg]
        """``sbatch --wait`` of ``command`` on ``node``: the exit code is the job's."""
        return subprocess.run(
            ["sbatch", "--wait", "-w", node, "-N1", "-n1", "-o", "/dev/null", "--chdir=/tmp", "-J", "bvt-mfarm"]
            + ["--wrap", command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=slurmcli.env(SLURM_CONF),
        )

    # -- playbooks --------------------------------------------------------------------------
    def inventory(self) -> Dict[str, Any]:
        return self.bed.inventory()

    def run(self, playbook: str, timeout: int = 1800, inventory: Optional[str] = None, **extra: Any) -> PlaybookResult:
        """A collection playbook with the farm's variables, against the bed's hypervisors (or
        ``inventory``: a directory from :meth:`slots_inventory`); the batch commands it runs on this
        machine reach the farm's slurmctld."""
        return run_playbook(
            os.path.join(ROOT, "playbooks", playbook),
            inventory=inventory if inventory is not None else self.inventory(),
            extravars=dict(self.extravars, **extra),
            envvars={"SLURM_CONF": SLURM_CONF},
            timeout=timeout,
        )

    def slots_inventory(self, directory: str) -> str:
        """An inventory directory as a site's AWX project has it: the hypervisors (group
        ``hypervisors``, SSH settings as group variables) and the slots plugin reading them over
        ``qemu+ssh://`` with the batch view; the lifecycle plays run against it."""
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, "a-hypervisors.yml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(self.inventory(), fh)
        config = {
            "plugin": "batchvirt.farm.slots",
            "hypervisor_group": "hypervisors",
            "uri_template": self.bed.uri_template(),
            "batch": {"system": "slurm"},
            "timeout": 20,
        }
        with open(os.path.join(directory, "farm.farm.slots.yml"), "w", encoding="utf-8") as fh:
            yaml.safe_dump(config, fh)
        return directory

    # -- pieces -----------------------------------------------------------------------------
    def serve(self, directory: str) -> str:
        handler = functools.partial(_Quiet, directory=directory)
        self._http = http.server.ThreadingHTTPServer((self.controller, HTTP_PORT), handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return f"http://{self.controller}:{HTTP_PORT}"

    def start_slurmctld(self) -> None:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode != 0:
            subprocess.run(["service", "munge", "start"], capture_output=True, check=False)
        # a copy of the binary: `service slurmctld stop` elsewhere must not stop this one
        binary = os.path.join(self.tmp, "slurmctld")
        shutil.copy2(shutil.which("slurmctld") or "/usr/sbin/slurmctld", binary)
        subprocess.run([binary, "-f", SLURM_CONF], capture_output=True, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "is UP" in slurm("scontrol", "ping", check=False):
                return
            time.sleep(0.5)
        log = ""
        for name in sorted(os.listdir(os.path.join(self.tmp, "log"))):
            with open(os.path.join(self.tmp, "log", name), encoding="utf-8", errors="replace") as fh:
                log += f"--- {name}\n" + fh.read()[-3000:]
        raise MultiFarmError(f"slurmctld -f {SLURM_CONF} does not answer:\n{log}")

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        stop_pid(read_pid(os.path.join(self.tmp, "slurmctld.pid")))
        shutil.rmtree(SLURM_CONF_DIR, ignore_errors=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


def guest_slurm_conf(text: str, controller: str) -> str:
    """The controller's slurm.conf as a guest needs it: the controller at its bed address,
    slurmd listening on every guest address, the distribution's paths."""
    out = []
    for line in text.splitlines():
        if line.startswith("SlurmctldHost="):
            line = f"SlurmctldHost=localhost({controller})"
        elif line.startswith(
            ("CommunicationParameters=", "SlurmctldLogFile=", "StateSaveLocation=", "SlurmctldPidFile=")
        ):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def controller_vars(tmp: str, controller: str, nodes: Dict[str, str], bed: HypervisorBed) -> Dict[str, Any]:
    address = {hv.name: hv.address for hv in bed.hypervisors}
    return {
        "farm_batch_controller_cluster_name": "bvtmulti",
        "farm_batch_controller_hostname": "localhost",
        "farm_batch_controller_address": controller,
        "farm_batch_controller_port": CTLD_PORT,
        # listen on every address: with NoCtldInAddrAny slurmctld binds to what its host name
        # resolves to (localhost: 127.0.0.1), not to the address given in SlurmctldHost, and
        # neither the guests nor scontrol (which use that address) would reach it
        "farm_batch_controller_no_in_addr_any": False,
        "farm_batch_controller_state_dir": os.path.join(tmp, "state"),
        "farm_batch_controller_log_dir": os.path.join(tmp, "log"),
        "farm_batch_controller_pid_file": os.path.join(tmp, "slurmctld.pid"),
        "farm_batch_controller_conf_dir": SLURM_CONF_DIR,
        "farm_batch_controller_manage_services": False,
        "farm_batch_controller_slurmd_timeout": 60,
        "farm_batch_controller_extra_config": {"MinJobAge": 3600},
        "farm_batch_controller_nodes": [
            {"name": node, "address": address[hv], "port": SLURMD_PORT, "cpus": 1, "memory": 200}
            for hv, node in nodes.items()
        ],
    }


def remove_leftovers() -> None:
    """The slurmctld of an earlier run killed before its clean-up (found by its own slurm.conf)."""
    stale = subprocess.run(["pgrep", "-f", "slurmctld -f " + SLURM_CONF], capture_output=True, text=True, check=False)
    for pid in stale.stdout.split():
        stop_pid(int(pid))


def build(bed: HypervisorBed, memory_mib: int = 512) -> MultiFarm:
    """Controller pieces on this machine, then site.yml against the bed. The caller calls
    ``stop`` on the farm returned; a failed build stops what it started itself."""
    remove_leftovers()
    tmp = tempfile.mkdtemp(prefix="bvt-mfarm-")
    os.chmod(tmp, 0o755)
    for sub in ("state", "log"):
        os.makedirs(os.path.join(tmp, sub))
    controller = bed.hypervisors[0].host_address
    farm = MultiFarm(bed=bed, tmp=tmp, controller=controller)
    try:
        _build(farm, bed, memory_mib)
    except BaseException:
        farm.stop()
        raise
    return farm


def _build(farm: MultiFarm, bed: HypervisorBed, memory_mib: int) -> None:
    tmp, controller = farm.tmp, farm.controller
    # vm_slots names slot n of a hypervisor <hypervisor>-slot-NN: one slot each
    farm.nodes = {hv.name: f"{hv.name}-slot-01" for hv in bed.hypervisors}

    start = time.monotonic()
    result = _check(run_playbook(os.path.join(FARM_PLAYBOOKS, "worker_image.yml"), inventory=LOCALHOST), "base_image")
    image = result.results("Report the image description")[0]["farm_base_image"]["file"]
    farm.timings["worker image (base_image role, cached by recipe)"] = time.monotonic() - start

    start = time.monotonic()
    shutil.rmtree(SLURM_CONF_DIR, ignore_errors=True)
    _check(
        run_playbook(
            os.path.join(FARM_PLAYBOOKS, "controller.yml"),
            inventory=LOCALHOST,
            extravars=controller_vars(tmp, controller, farm.nodes, bed),
        ),
        "batch_controller role",
    )
    farm.start_slurmctld()
    base_url = farm.serve(os.path.dirname(image))
    farm.timings["slurmctld and image server on the controller"] = time.monotonic() - start

    start = time.monotonic()
    sha512 = hash_file(image)[1]
    farm.timings["image checksum"] = time.monotonic() - start
    with open(bed.key + ".pub", encoding="utf-8") as fh:
        pubkey = fh.read().strip()
    with open("/etc/munge/munge.key", "rb") as fh:
        munge_b64 = base64.b64encode(fh.read()).decode()
    with open(SLURM_CONF, encoding="utf-8") as fh:
        slurm_conf = guest_slurm_conf(fh.read(), controller)
    farm.extravars = {
        # hypervisors.yml, as the bed's other tests run it
        "farm_hypervisor_network_mode": "user",
        "farm_hypervisor_reserved_memory_mib": 512,
        # prestage.yml: the worker image from this machine's image server
        "farm_image_cache_images": [
            {
                "identifier": IDENTIFIER,
                "version": "1",
                "source": f"{base_url}/{os.path.basename(image)}",
                "sha512": sha512,
                "size": os.path.getsize(image),
            }
        ],
        # golden_node.yml: no golden VM on the bed (a group nobody is in)
        "farm_golden_node_hosts": "bvt_no_golden_nodes",
        # slots.yml: one TCG slot per hypervisor, its slurmd reached at the hypervisor's address
        "farm_vm_slots_profile": {"vcpus": 1, "memory_mib": memory_mib, "count": 1},
        "farm_vm_slots_domain_type": "qemu",
        "farm_vm_slots_image": {"identifier": IDENTIFIER, "version": "latest"},
        "farm_vm_slots_network": {
            "mode": "user",
            "forwards": [f"{{{{ ansible_host }}}}:{SLURMD_PORT}:{SLURMD_PORT}"],
        },
        "farm_vm_slots_lifetime_spread": 0,
        # the bed's key logs in to the guests too (through the hypervisor: ProxyJump)
        "farm_vm_slots_ssh_authorized_keys": [pubkey],
        "farm_vm_slots_batch": {
            "system": "slurm",
            "controller": controller,
            "controller_port": CTLD_PORT,
            "munge_key": munge_b64,
            "slurm_conf": slurm_conf,
            "dynamic": False,
        },
    }

    start = time.monotonic()
    farm.site = _check(farm.run("site.yml"), "playbooks/site.yml")
    farm.timings["site.yml (hypervisors, pre-staging, slots created and started)"] = time.monotonic() - start

    start = time.monotonic()
    farm.wait_accepting()
    farm.timings["slots boot and register (TCG)"] = time.monotonic() - start


def nodes_of(farm: MultiFarm) -> List[str]:
    return list(farm.nodes.values())
