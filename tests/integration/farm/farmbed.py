"""A REAL test farm, built once: the hypervisor role on localhost, the worker image (base_image,
slurmd + munge), a Slurm controller (batch_controller role, slurmctld on 127.0.0.1), the image
staged in an image cache, and N slots whose VMs boot under QEMU and register with slurmctld by
themselves (pre-declared nodes, NodeAddr=127.0.0.1 and a port per node that each guest's user-mode
network forwards to its slurmd; ``SlurmctldHost=localhost(10.0.2.2)`` in the guest).

Used by ``conftest.py`` (the session fixture ``farm``) and by ``bench/rolling_update.py``.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._imagelist import hash_file
from tests.testbed import slurmcli
from tests.testbed.ansible import LOCALHOST, ROOT, PlaybookResult, check_playbook, run_playbook
from tests.testbed.processes import read_pid, stop_pid

HERE = os.path.dirname(os.path.abspath(__file__))
PLAYBOOKS = os.path.join(HERE, "playbooks")
# The farm's own controller configuration and slurmctld process: the machine's /etc/slurm and its
# slurmctld service stay free for other tests (tests/integration/batch) running at the same time.
SLURM_CONF_DIR = os.environ.get("BVT_FARM_SLURM_CONF_DIR", "/run/bvt-farm-slurm")
SLURM_CONF = os.path.join(SLURM_CONF_DIR, "slurm.conf")
HYPERVISOR = "bvtfarm"  # the hypervisor name in the slots' metadata (and their names)
IDENTIFIER = "bvt-worker"
CTLD_PORT = int(os.environ.get("BVT_FARM_SLURMCTLD_PORT", "27817"))
SSH_PORT_BASE = 27022
SLURMD_PORT_BASE = 27901
IMAGE_ROOT = "/var/lib/batchvirt/bvt-farm-images"
GOLDEN_TYPE = "bvtfarmgold"  # the farm's golden VM is golden-<type>
GOLDEN_SSH_PORT = 27298
# The worker types the farm's tests declare (test_farm_retype.py). Slurm refuses a job whose
# --constraint names a feature that no node of its configuration has ("Invalid feature
# specification"), also before the first slot of that type exists: one placeholder node that never
# runs (State=DOWN) carries every type's features, so such a job is accepted and waits.
WORKER_TYPES = ("bvta", "bvtb")
TYPES_NODE = HYPERVISOR + "-types"
# Node states that count as capacity in service. "completing" is a node whose job just ended and
# whose epilog runs: it was not taken out of service and takes the next job a moment later.
ACCEPTING = ("idle", "allocated", "mixed", "completing")


def in_service(state: str) -> bool:
    """Whether a node state counts as capacity in service. Slurm's "*" suffix (a missed ping) is
    ignored: a TCG guest busy on this 2-core machine misses pings now and then while its job runs,
    which is not capacity the rolling update took out."""
    return state.rstrip("*") in ACCEPTING


class FarmError(AssertionError):
    pass


def _check(result: PlaybookResult, what: str) -> PlaybookResult:
    return check_playbook(result, what, FarmError)


def slurm(*argv: str, check: bool = True, timeout: float = 60) -> str:
    """A Slurm command against the farm's controller (its private slurm.conf)."""
    return slurmcli.run(SLURM_CONF, *argv, check=check, timeout=timeout, error=FarmError)


@dataclass
class Farm:
    tmp: str
    count: int
    names: List[str]
    image_path: str
    extravars: Dict[str, Any]
    inventory: str
    timings: Dict[str, float] = field(default_factory=dict)
    versions: List[str] = field(default_factory=list)
    # the image the golden node made (test_farm_golden.py), for the rolling update to stage
    golden: Optional[Dict[str, Any]] = None

    # -- the batch system's view ----------------------------------------------------------
    def node_states(self) -> Dict[str, str]:
        out = slurm("sinfo", "-h", "-N", "-n", ",".join(self.names), "-o", "%N %T", check=False)
        states = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2:
                states[parts[0]] = parts[1].lower()
        return states

    def accepting(self) -> int:
        return sum(1 for s in self.node_states().values() if in_service(s))

    def wait_accepting(self, count: Optional[int] = None, timeout: float = 900) -> float:
        """Wait until ``count`` (default all) nodes take jobs; returns the seconds waited."""
        want = self.count if count is None else count
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.accepting() >= want:
                return time.monotonic() - start
            time.sleep(2)
        raise FarmError(f"only {self.accepting()} of {want} nodes accept jobs after {timeout} s: {self.node_states()}")

    def submit(self, node: str, seconds: int, command: str = "") -> subprocess.Popen:
        """``sbatch --wait`` of a job sleeping ``seconds`` (or running ``command``) on ``node``:
        its exit code is the job's."""
        return subprocess.Popen(
            [
                "sbatch",
                "--wait",
                "-w",
                node,
                "-N1",
                "-n1",
                "-o",
                "/dev/null",
                "--chdir=/tmp",
                "-J",
                "bvt-farm",
                "--wrap",
                command or f"sleep {seconds}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=slurmcli.env(SLURM_CONF),
        )

    def running_jobs(self) -> Dict[str, int]:
        out = slurm("squeue", "-h", "-t", "RUNNING", "-o", "%N", check=False)
        counts: Dict[str, int] = {}
        for node in out.split():
            counts[node] = counts.get(node, 0) + 1
        return counts

    # -- the slots ----------------------------------------------------------------------
    def metadata(self) -> Dict[str, Dict[str, Any]]:
        """Each slot's metadata as the slot module writes it (read through libvirt)."""
        import libvirt

        from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata

        conn = libvirt.open("qemu:///system")
        try:
            out = {}
            for name in self.names:
                try:
                    dom = conn.lookupByName(name)
                except libvirt.libvirtError:
                    continue
                meta = read_metadata(dom)
                if meta is not None:
                    out[name] = dict(meta.to_dict(), running=bool(dom.isActive()))
            return out
        finally:
            conn.close()

    def stage_version(self, version: str, path: Optional[str] = None) -> None:
        """Publish and stage a new version of the worker image (a copy of the base image)."""
        source = path or self.image_path
        if path is None and self.versions:
            source = os.path.join(self.tmp, f"worker-{version}.qcow2")
            shutil.copyfile(self.image_path, source)
        image = {
            "identifier": IDENTIFIER,
            "version": version,
            "path": source,
            "sha512": hash_file(source)[1],
            "size": os.path.getsize(source),
            "root": IMAGE_ROOT,
        }
        _check(run_playbook(os.path.join(PLAYBOOKS, "stage_image.yml"), extravars={"bvt_image": image}), "staging")
        self.versions.append(version)

    def golden_vars(self) -> Dict[str, Any]:
        """golden_node.yml's variables for the farm's golden node, booted from the worker base image."""
        return {
            "farm_golden_node_type": GOLDEN_TYPE,
            "farm_golden_node_base_image": os.path.join(os.path.dirname(self.image_path), "worker-base.json"),
            "farm_golden_node_vcpus": 1,
            "farm_golden_node_memory_mib": 768,
            "farm_golden_node_ssh_port": GOLDEN_SSH_PORT,
            "farm_golden_node_ssh_key": os.path.join(self.tmp, "golden_key"),
            "farm_golden_node_dir": os.path.join(self.tmp, "golden"),
            "farm_golden_node_restart": False,
            # the worker image carries slurmd and munge: configure only, start nothing
            "farm_batch_client_install_packages": False,
            "farm_batch_client_start": False,
            "farm_batch_client_enable": False,
        }

    def run_golden_node(self, **extra: Any) -> PlaybookResult:
        """playbooks/golden_node.yml with :meth:`golden_vars` and ``extra``; a successful run's image
        becomes :attr:`golden`."""
        result = run_playbook(
            os.path.join(ROOT, "playbooks", "golden_node.yml"),
            inventory=LOCALHOST,
            extravars=dict(self.golden_vars(), **extra),
        )
        if result.rc == 0:
            self.golden = result.results("Snapshot the golden VM into a new image version")[0]["image"]
        return result

    def golden_version(self) -> Dict[str, Any]:
        """A new worker image version produced by the golden node: the golden VM boots from the
        worker base image, is configured over SSH, sealed, shut down and snapshotted. Returns the
        snapshot module's ``image`` result (path, sha512, size, version): the one the golden node
        test of this package made, or a new one when that test did not run."""
        if self.golden is None:
            _check(self.run_golden_node(), "the golden node run")
        assert self.golden is not None
        return self.golden

    def run(self, playbook: str, check: bool = False, now: Optional[str] = None, **extra: Any) -> PlaybookResult:
        """A collection playbook through ansible-runner, inventory = the plugin config file (as AWX)."""
        env = {"SLURM_CONF": SLURM_CONF}
        if now:
            env["BATCHVIRT_FARM_NOW"] = now
        return run_playbook(
            os.path.join(ROOT, "playbooks", playbook),
            inventory=self.inventory,
            extravars=dict(self.extravars, **extra),
            check=check,
            envvars=env,
        )

    def slots_playbook(self, **extra: Any) -> PlaybookResult:
        return run_playbook(
            os.path.join(PLAYBOOKS, "slots.yml"), extravars=dict(self.extravars, bvt_slots=self.slot_entries(), **extra)
        )

    def slot_entries(self) -> List[Dict[str, Any]]:
        return [
            {
                "name": name,
                "network": {
                    "ssh_port": SSH_PORT_BASE + i,
                    "forwards": [f"127.0.0.1:{SLURMD_PORT_BASE + i}:{SLURMD_PORT_BASE + i}"],
                },
            }
            for i, name in enumerate(self.names)
        ]


class CapacitySampler(threading.Thread):
    """Samples how many of the farm's nodes accept jobs (``sinfo``) while an operation runs."""

    def __init__(self, farm: Farm, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.farm = farm
        self.interval = interval
        self.samples: List[Tuple[float, int, Dict[str, str]]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.is_set():
            states = self.farm.node_states()
            self.samples.append((time.monotonic() - start, sum(1 for s in states.values() if in_service(s)), states))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def min_share(self) -> float:
        if not self.samples:
            return 1.0
        return min(count for _t, count, _s in self.samples) / self.farm.count


def controller_vars(tmp: str, names: List[str]) -> Dict[str, Any]:
    return {
        "farm_batch_controller_cluster_name": "bvtfarm",
        "farm_batch_controller_hostname": "localhost",
        "farm_batch_controller_address": "127.0.0.1",
        "farm_batch_controller_port": CTLD_PORT,
        "farm_batch_controller_no_in_addr_any": True,
        "farm_batch_controller_state_dir": os.path.join(tmp, "state"),
        "farm_batch_controller_log_dir": os.path.join(tmp, "log"),
        "farm_batch_controller_pid_file": os.path.join(tmp, "slurmctld.pid"),
        "farm_batch_controller_conf_dir": SLURM_CONF_DIR,
        "farm_batch_controller_manage_services": False,  # our own slurmctld, started below
        # a destroyed VM is noticed within a boot; long enough for busy TCG guests to answer pings
        "farm_batch_controller_slurmd_timeout": 30,
        "farm_batch_controller_extra_config": {"MinJobAge": 3600},
        "farm_batch_controller_nodes": [
            {
                "name": n,
                "address": "127.0.0.1",
                "port": SLURMD_PORT_BASE + i,
                "cpus": 1,
                "memory": 200,
                "features": ["bvtfarm"],
            }
            for i, n in enumerate(names)
        ]
        + [
            {
                "name": TYPES_NODE,
                "address": "127.0.0.1",
                "port": SLURMD_PORT_BASE + 98,  # nothing listens there
                "features": ["bvtfarm", *WORKER_TYPES],
                "state": "DOWN",
            }
        ],
    }


def start_slurmctld(tmp: str) -> None:
    """munge (the service, shared) and this farm's own slurmctld (-f its slurm.conf), answering."""
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode != 0:
        subprocess.run(["service", "munge", "start"], capture_output=True, check=False)
    stop_slurmctld(tmp)
    # a copy of the binary: `service slurmctld stop` (another test's clean-up) stops every process
    # of /usr/sbin/slurmctld, and must not stop this farm's controller
    binary = os.path.join(tmp, "slurmctld")
    shutil.copy2(shutil.which("slurmctld") or "/usr/sbin/slurmctld", binary)
    subprocess.run([binary, "-f", SLURM_CONF], capture_output=True, check=True, timeout=60)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "is UP" in slurm("scontrol", "ping", check=False):
            return
        time.sleep(0.5)
    raise FarmError("slurmctld -f %s does not answer scontrol ping; see %s" % (SLURM_CONF, os.path.join(tmp, "log")))


def stop_slurmctld(tmp: str) -> None:
    stop_pid(read_pid(os.path.join(tmp, "slurmctld.pid")))


def guest_slurm_conf(text: str) -> str:
    """The controller's slurm.conf as a guest needs it: the controller at the host (10.0.2.2 in the
    guest's user-mode network), slurmd listening on every guest address, the distribution's paths."""
    out = []
    for line in text.splitlines():
        if line.startswith("SlurmctldHost="):
            line = "SlurmctldHost=localhost(10.0.2.2)"
        elif line.startswith(
            ("CommunicationParameters=", "SlurmctldLogFile=", "StateSaveLocation=", "SlurmctldPidFile=")
        ):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def configure(
    tmp: str, names: List[str], image_path: str, memory_mib: int = 512, timings: Optional[Dict[str, float]] = None
) -> Farm:
    """The :class:`Farm` (extra variables, inventory file) for a controller that runs already."""
    with open("/etc/munge/munge.key", "rb") as handle:
        munge_b64 = base64.b64encode(handle.read()).decode()
    with open(SLURM_CONF) as handle:
        slurm_conf = guest_slurm_conf(handle.read())

    extravars: Dict[str, Any] = {
        "farm_ops_scope": HYPERVISOR,
        "farm_ops_controller": "localhost",
        "farm_ops_poll_interval": 2,
        # the farm's own operations lock (the machine's default path stays free for other tests)
        "farm_ops_lock_path": os.path.join(tmp, "operations.lock"),
        "farm_ops_boot_timeout": 900,
        "farm_ops_slot": {
            "uri": "qemu:///system",
            "vcpus": 1,
            "memory_mib": memory_mib,
            "disk_size_gib": None,
            "domain_type": "qemu",
            "boot": {"mode": "bootloader"},
            "network": {"mode": "user"},
            "cloud_init": {},
            "ssh_authorized_keys": [],
            "lifetime": 7 * 86400,
            "lifetime_spread": 0,
            # a short walltime: the recycle test moves the clock past ONE slot's deadline while the
            # other slot, created a minute later, has not reached its drain time
            "max_job_walltime": 10,
            "pool": "batchvirt-slots",
            "image_cache_root": IMAGE_ROOT,
        },
        "farm_ops_batch": {
            "system": "slurm",
            "controller": "10.0.2.2",
            "controller_port": CTLD_PORT,
            "munge_key": munge_b64,
            "slurm_conf": slurm_conf,
            "dynamic": False,
        },
        "bvt_hypervisor": HYPERVISOR,
        "bvt_image_identifier": IDENTIFIER,
    }
    inventory = os.path.join(tmp, "farm.farm.slots.yml")
    with open(inventory, "w") as handle:
        json.dump(
            {
                "plugin": "batchvirt.farm.slots",
                "hypervisors": [{"uri": "qemu:///system", "name": "localhost"}],
                "batch": {"system": "slurm"},
                "groups": {HYPERVISOR: f"farm_slot.hypervisor == '{HYPERVISOR}'"},
                "fail_on_errors": False,
            },
            handle,
        )
    return Farm(
        tmp=tmp,
        count=len(names),
        names=names,
        image_path=image_path,
        extravars=extravars,
        inventory=inventory,
        timings=timings if timings is not None else {},
    )


def attach(tmp: str, count: int = 2, memory_mib: int = 512) -> Farm:
    """A farm built earlier by :func:`build` (same ``tmp``) and still running: for debugging and benches."""
    with open(os.path.join(tmp, "image_path")) as handle:
        image_path = handle.read().strip()
    farm = configure(tmp, [f"{HYPERVISOR}-slot-{i:02d}" for i in range(1, count + 1)], image_path, memory_mib)
    farm.versions = sorted({version_of(m) for m in farm.metadata().values()})
    return farm


def build(count: int = 2, memory_mib: int = 512, tmp: Optional[str] = None) -> Farm:
    """Build the farm; the caller must call :func:`destroy` whatever happens."""
    tmp = tmp or tempfile.mkdtemp(prefix="bvt-farm-")
    os.makedirs(tmp, exist_ok=True)
    os.chmod(tmp, 0o755)
    for sub in ("state", "log"):
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    names = [f"{HYPERVISOR}-slot-{i:02d}" for i in range(1, count + 1)]
    timings: Dict[str, float] = {}
    leftovers = remove_leftovers()
    if leftovers:
        raise FarmError("cannot clear what an earlier run left: %s" % leftovers)

    t0 = time.monotonic()
    result = _check(run_playbook(os.path.join(PLAYBOOKS, "worker_image.yml"), inventory=LOCALHOST), "base_image role")
    description = result.results("Report the image description")[0]["farm_base_image"]
    image_path = description["file"]
    with open(os.path.join(tmp, "image_path"), "w") as handle:
        handle.write(image_path)
    timings["worker_image"] = time.monotonic() - t0

    t0 = time.monotonic()
    _check(
        run_playbook(
            os.path.join(PLAYBOOKS, "controller.yml"), inventory=LOCALHOST, extravars=controller_vars(tmp, names)
        ),
        "batch_controller role",
    )
    start_slurmctld(tmp)
    timings["controller"] = time.monotonic() - t0
    farm = configure(tmp, names, image_path, memory_mib, timings)

    t0 = time.monotonic()
    farm.stage_version("1")
    timings["stage"] = time.monotonic() - t0

    t0 = time.monotonic()
    _check(farm.slots_playbook(), "creating the slots")
    farm.wait_accepting()
    timings["slots_boot_register"] = time.monotonic() - t0
    return farm


def destroy(farm: Optional[Farm], tmp: Optional[str] = None) -> List[str]:
    """Remove the slots, the staged images and the controller; returns what could not be cleaned."""
    errors = []
    if farm is not None:
        result = farm.slots_playbook(bvt_state="absent", bvt_force=True)
        if result.rc != 0:
            errors.append("removing the slots failed: " + result.stdout[-2000:])
        tmp = farm.tmp
    errors.extend(_remove_golden_vm())
    if tmp:
        stop_slurmctld(tmp)
    for path in (IMAGE_ROOT, IMAGE_ROOT + ".cache", SLURM_CONF_DIR):
        shutil.rmtree(path, ignore_errors=True)
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    return errors


def _remove_vms(names: List[str]) -> List[str]:
    """These domains (stopped, undefined) and their overlays and seed ISOs, where they exist."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        for name in names:
            try:
                dom = conn.lookupByName(name)
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
            except libvirt.libvirtError:
                pass
        try:
            pool = conn.storagePoolLookupByName("batchvirt-slots")
            pool.refresh(0)
            for name in names:
                for vol in (name + ".qcow2", name + "-seed.iso"):
                    try:
                        pool.storageVolLookupByName(vol).delete(0)
                    except libvirt.libvirtError:
                        pass
        except libvirt.libvirtError as exc:
            return ["removing the volumes of %s failed: %s" % (", ".join(names), exc)]
        return []
    finally:
        conn.close()


def _remove_golden_vm() -> List[str]:
    """The golden VM of :meth:`Farm.golden_version`, its overlay and seed ISO, if they exist."""
    return _remove_vms(["golden-" + GOLDEN_TYPE])


def remove_leftovers() -> List[str]:
    """What an interrupted earlier run (killed before :func:`destroy`) left: its slots, golden
    VM, controller, staged images and image cache. A stale image cache would hold a version the
    golden node is about to publish again with other content, which the image module rightly
    refuses."""
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        names = sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(HYPERVISOR + "-slot-"))
    finally:
        conn.close()
    errors = _remove_vms(names + ["golden-" + GOLDEN_TYPE])
    stale = subprocess.run(["pgrep", "-f", "slurmctld -f " + SLURM_CONF], capture_output=True, text=True, check=False)
    for pid in stale.stdout.split():
        stop_pid(int(pid))
    for path in (IMAGE_ROOT, IMAGE_ROOT + ".cache", SLURM_CONF_DIR):
        shutil.rmtree(path, ignore_errors=True)
    return errors


def iso(value: str, seconds: float = 0) -> str:
    """``value`` (UTC ISO-8601) plus ``seconds``, as the injected clock wants it."""
    parsed = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    return (parsed + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def version_of(meta: Dict[str, Any]) -> str:
    return str(meta["image"]["version"])


def events_of(result: PlaybookResult, task: str) -> List[Dict[str, Any]]:
    return [r for r in result.results(task) if r]
