"""Fixtures of the batch area: a real Slurm controller set up by the collection's own
batch_controller role on localhost (127.0.0.1, pre-declared nodes each with its own port),
and slurmd processes started by hand for those nodes.

The machine's own Slurm is left alone: the role writes this cluster's slurm.conf into a
private directory (never /etc/slurm), the controller is this fixture's own slurmctld
(``-f`` that file, its own ports, a private copy of the binary), and the system's slurmctld
service, if one runs (a demo farm), keeps running and answering."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._batch import BatchError, get_adapter, manage_nodes
from tests.testbed import machine
from tests.testbed.ansible import LOCALHOST, ROOT, PlaybookResult, run_playbook
from tests.testbed.processes import read_pid, stop_pid

HERE = os.path.dirname(os.path.abspath(__file__))
CTLD_PORT = int(os.environ.get("BVT_SLURMCTLD_PORT", "26817"))
NODE_PORT = CTLD_PORT + 80  # bvt-n1 -> 26897, ...
NODES = ["bvtn1", "bvtn2", "bvtn3"]
# this cluster's own configuration, never the machine's /etc/slurm (a demo's controller reads that)
SLURM_CONF_DIR = os.environ.get("BVT_BATCH_SLURM_CONF_DIR", "/run/bvt-batch-slurm")
SLURM_CONF = os.path.join(SLURM_CONF_DIR, "slurm.conf")


@dataclass
class SlurmCluster:
    tmp: str
    extravars: Dict[str, object]
    first: PlaybookResult
    second: PlaybookResult
    nodes: List[str] = field(default_factory=lambda: list(NODES))
    slurmd_pids: Dict[str, int] = field(default_factory=dict)

    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=SLURM_CONF)

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=self.env(), timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc

    def pid_file(self, node: str) -> str:
        return f"/run/bvt-slurmd-{node}.pid"

    def start_slurmd(self, node: str, extra: List[str] = ()) -> None:  # type: ignore[assignment]
        self.run("slurmd", "-N", node, *extra)
        for _attempt in range(50):
            if os.path.exists(self.pid_file(node)):
                break
            time.sleep(0.1)
        with open(self.pid_file(node)) as handle:
            self.slurmd_pids[node] = int(handle.read().strip())

    def stop_slurmd(self, node: str) -> None:
        stop_pid(self.slurmd_pids.pop(node, None), timeout=5)

    @property
    def slurm_conf(self) -> str:
        return SLURM_CONF

    def start_controller(self) -> None:
        """This cluster's own slurmctld (-f its slurm.conf), from a private copy of the binary:
        `service slurmctld stop` stops every process of /usr/sbin/slurmctld, and must neither
        stop this controller nor be needed to stop it."""
        self.stop_controller()
        binary = os.path.join(self.tmp, "slurmctld")
        shutil.copy2(shutil.which("slurmctld") or "/usr/sbin/slurmctld", binary)
        subprocess.run([binary, "-f", SLURM_CONF], capture_output=True, check=True, timeout=60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if "is UP" in self.run("scontrol", "ping", check=False).stdout:
                return
            time.sleep(0.5)
        raise AssertionError(f"slurmctld -f {SLURM_CONF} does not answer scontrol ping; see {self.tmp}/log")

    def stop_controller(self) -> None:
        """Stop this cluster's slurmctld by its pid (never the init script: its stop would end
        every /usr/sbin/slurmctld on the machine, a demo's and other tests' too)."""
        stop_pid(read_pid(str(self.extravars["farm_batch_controller_pid_file"])))

    def batch_node(self, check: bool = False, **args: object) -> Dict[str, object]:
        """Run the batch_node module once through ansible-runner; its result (ok or failed).
        It talks to this cluster (its slurm.conf), never to the machine's default controller."""
        args.setdefault("slurm_conf", SLURM_CONF)
        result = run_playbook(os.path.join(HERE, "batch_node.yml"), extravars={"bn": args}, check=check)
        results = result.results("Run batch_node")
        assert results, f"batch_node did not run:\n{result.stdout[-3000:]}"
        res = dict(results[-1])
        res["failed"] = bool(result.task_events("Run batch_node", "runner_on_failed"))
        return res

    def manage(self, names, state: str, **kwargs: object) -> Dict[str, object]:  # type: ignore[no-untyped-def]
        """The batch_node engine called in-process (same code, no ansible-runner start-up)."""
        adapter = get_adapter("slurm", slurm_conf=str(kwargs.pop("slurm_conf", SLURM_CONF)))
        try:
            return manage_nodes(adapter, names, state, **kwargs)  # type: ignore[arg-type]
        except BatchError as exc:
            return {"failed": True, "msg": exc.message, "nodes": exc.nodes}

    def wait_state(self, node: str, predicate, timeout: float = 30) -> str:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-N", "-n", node, "-o", "%T", check=False).stdout.strip()
            if predicate(state):
                return state
            time.sleep(0.3)
        raise AssertionError(f"node {node} still in state {state!r} after {timeout} s")


def _key_digest() -> str:
    with open("/etc/munge/munge.key", "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _munge_running() -> bool:
    return subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode == 0


def controller_vars(tmp: str) -> Dict[str, object]:
    return {
        "farm_batch_controller_cluster_name": "bvt",
        "farm_batch_controller_hostname": "localhost",
        "farm_batch_controller_address": "127.0.0.1",
        "farm_batch_controller_port": CTLD_PORT,
        "farm_batch_controller_slurmd_port": CTLD_PORT + 1,  # dynamic nodes listen there
        "farm_batch_controller_no_in_addr_any": True,
        "farm_batch_controller_max_node_count": 8,
        "farm_batch_controller_conf_dir": SLURM_CONF_DIR,
        "farm_batch_controller_manage_services": False,  # our own slurmctld, started by the fixture
        "farm_batch_controller_state_dir": os.path.join(tmp, "state"),
        "farm_batch_controller_log_dir": os.path.join(tmp, "log"),
        "farm_batch_controller_pid_file": os.path.join(tmp, "slurmctld.pid"),
        "farm_batch_controller_slurmd_spool_dir": os.path.join(tmp, "spool", "%n"),
        "farm_batch_controller_slurmd_pid_file": "/run/bvt-slurmd-%n.pid",
        "farm_batch_controller_slurmd_log_file": os.path.join(tmp, "log", "slurmd-%n.log"),
        "farm_batch_controller_slurmd_timeout": 10,
        "farm_batch_controller_nodes": [
            {"name": n, "address": "127.0.0.1", "port": NODE_PORT + i, "cpus": 1, "memory": 500, "features": ["bvt"]}
            for i, n in enumerate(NODES, start=1)
        ],
    }


@dataclass
class DemoController:
    """The machine's own, demo-style Slurm controller (the slurmctld service, /etc/slurm/slurm.conf)."""

    ours: bool  # set up by this fixture (no demo ran): the test removes it with the demo's teardown
    before: Dict[str, object]  # the machine before this fixture
    conf_digest: str
    cleaned: bool = False

    def clean(self) -> PlaybookResult:
        self.cleaned = True
        return run_playbook(os.path.join(ROOT, "playbooks", "demo_clean.yml"), inventory=LOCALHOST)


@pytest.fixture(scope="session")
def demo_controller():
    """A running demo's controller, or the demo's own controller step on this machine
    (``playbooks/demo.yml --tags controller,pki``) when no demo runs: the batch tests must leave it
    answering, and the demo's teardown (``test_zz_demo_survives.py``) must then leave the machine
    as this fixture found it."""
    before = machine.state()
    ours = not machine.system_slurm_answers()
    if ours:
        result = run_playbook(os.path.join(ROOT, "playbooks", "demo.yml"), inventory=LOCALHOST, tags="controller,pki")
        assert result.rc == 0, "the demo's controller step failed:\n" + result.stdout[-4000:]
        assert machine.system_slurm_answers()
    with open(machine.SYSTEM_SLURM_CONF, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    demo = DemoController(ours=ours, before=before, conf_digest=digest)
    try:
        yield demo
    finally:
        if ours and not demo.cleaned:
            demo.clean()


@pytest.fixture(scope="session")
def slurm_cluster(demo_controller):
    """slurmctld from the batch_controller role (run twice) with its own slurm.conf and ports,
    two slurmd started by hand; beside the machine's demo-style controller, which it leaves alone."""
    tmp = tempfile.mkdtemp(prefix="bvt-batch-")
    os.chmod(tmp, 0o755)
    for sub in ("spool", "out"):
        os.makedirs(os.path.join(tmp, sub))
    os.chmod(os.path.join(tmp, "out"), 0o1777)
    munge_before = _munge_running()
    if not munge_before:
        subprocess.run(["service", "munge", "start"], capture_output=True, check=False)
    conf_dir_before = os.path.exists(SLURM_CONF_DIR)
    extravars = controller_vars(tmp)
    playbook = os.path.join(HERE, "controller.yml")
    t0 = time.monotonic()
    first = run_playbook(playbook, extravars=extravars, inventory=LOCALHOST)
    assert first.rc == 0, "batch_controller role failed:\n" + first.stdout[-4000:]
    key_after_first = _key_digest()
    # the packages are installed by now: the second run checks idempotence of the rest faster
    second = run_playbook(
        playbook, extravars=dict(extravars, farm_batch_controller_install_packages=False), inventory=LOCALHOST
    )
    cluster = SlurmCluster(tmp=tmp, extravars=extravars, first=first, second=second)
    cluster.key_digests = (key_after_first, _key_digest())  # type: ignore[attr-defined]
    cluster.setup_seconds = time.monotonic() - t0  # type: ignore[attr-defined]
    try:
        cluster.start_controller()
        for node in NODES[:2]:
            os.makedirs(os.path.join(tmp, "spool", node), exist_ok=True)
            cluster.start_slurmd(node)
        for node in NODES[:2]:
            cluster.wait_state(node, lambda s: s == "idle")
        yield cluster
    finally:
        for node in list(cluster.slurmd_pids):
            cluster.stop_slurmd(node)
        cluster.stop_controller()
        if not munge_before:
            subprocess.run(["service", "munge", "stop"], capture_output=True, check=False)
        if not conf_dir_before:
            shutil.rmtree(SLURM_CONF_DIR, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
