"""A private Slurm controller for the demand tests: its own slurm.conf, ports and state under a
temporary directory, a copy of the slurmctld binary (another test's ``service slurmctld stop``
must not stop it), and nodes of three worker types that never start a slurmd, so that every
job submitted stays pending."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Dict

import pytest

from tests.testbed.processes import read_pid, stop_pid

CTLD_PORT = int(os.environ.get("BVT_DEMAND_SLURMCTLD_PORT", "28817"))

SLURM_CONF = """\
ClusterName=bvtdemand
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation={tmp}/state
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdSpoolDir={tmp}/spool
SlurmdPidFile={tmp}/slurmd-%n.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
NodeName=dema[1-2] NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Feature=typeA State=UNKNOWN
NodeName=demb[1-2] NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Feature=typeB,ssd State=UNKNOWN
NodeName=demc1 NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 Feature=typeC State=UNKNOWN
PartitionName=work Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=short Nodes=demb[1-2] Default=NO MaxTime=INFINITE State=UP
"""


@dataclass
class PrivateSlurm:
    tmp: str
    conf: str

    def env(self) -> Dict[str, str]:
        return dict(os.environ, SLURM_CONF=self.conf)

    def run(self, *argv: str, check: bool = True) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=self.env(), timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc.stdout

    def sbatch(self, *options: str) -> str:
        """Submit a job that would sleep 60 s; its job id."""
        out = self.run("sbatch", "--parsable", "-o", "/dev/null", *options, "--wrap", "sleep 60")
        return out.strip().split(";")[0]


@pytest.fixture(scope="session")
def private_slurm():
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True, check=False).returncode != 0:
        subprocess.run(["service", "munge", "start"], capture_output=True, check=False)
    tmp = tempfile.mkdtemp(prefix="bvt-demand-")
    os.chmod(tmp, 0o755)
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(tmp, sub))
    conf = os.path.join(tmp, "slurm.conf")
    with open(conf, "w") as handle:
        handle.write(SLURM_CONF.format(port=CTLD_PORT, slurmd_port=CTLD_PORT + 1, tmp=tmp))
    binary = os.path.join(tmp, "slurmctld")
    shutil.copy2(shutil.which("slurmctld") or "/usr/sbin/slurmctld", binary)
    cluster = PrivateSlurm(tmp=tmp, conf=conf)
    try:
        subprocess.run([binary, "-f", conf], capture_output=True, check=True, timeout=60, env=cluster.env())
        deadline = time.monotonic() + 60
        while "is UP" not in cluster.run("scontrol", "ping", check=False):
            if time.monotonic() > deadline:
                with open(os.path.join(tmp, "slurmctld.log")) as log:
                    raise AssertionError("private slurmctld does not answer scontrol ping:\n" + log.read()[-3000:])
            time.sleep(0.3)
        yield cluster
    finally:
        stop_pid(read_pid(os.path.join(tmp, "slurmctld.pid")))
        shutil.rmtree(tmp, ignore_errors=True)
