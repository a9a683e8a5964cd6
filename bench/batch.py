"""The batch adapter's bulk query against a real slurmctld, vs one query per node.

Starts its own slurmctld (a private slurm.conf under a temporary directory, port 28417,
loopback only) with N pre-declared nodes (``--count``, none with a running slurmd: the
controller knows them, which is what a query costs; NodeAddr=127.0.0.1, no slurmd answers) and measures, interleaved, ``--repeat``
times each (median):

* baseline: one ``scontrol -o show node NAME`` per node (what a naive per-node loop costs);
* ours: ``get_adapter("slurm").bulk_view(names)`` for all N names (``sinfo --json``, no
  squeue since no node is busy), the number of commands it ran, and the same with the text
  fallback forced (``scontrol -o -F show node``).

munged must run (``service munge start``). The last line is one JSON object.

    .venv/bin/python bench/batch.py [--count 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
sys.path.insert(0, COLLECTIONS)

from ansible_collections.batchvirt.farm.plugins.module_utils import _batch_slurm  # noqa: E402
from ansible_collections.batchvirt.farm.plugins.module_utils._batch import get_adapter  # noqa: E402

PORT = 28417


def write_conf(tmp: str, count: int) -> str:
    for sub in ("state", "log", "spool"):
        os.makedirs(os.path.join(tmp, sub), exist_ok=True)
    shutil.chown(os.path.join(tmp, "state"), "slurm", "slurm")
    shutil.chown(os.path.join(tmp, "log"), "slurm", "slurm")
    conf = os.path.join(tmp, "slurm.conf")
    nodes = "\n".join(
        f"NodeName=bn{i} NodeAddr=127.0.0.1 CPUs=1 RealMemory=500 State=UNKNOWN" for i in range(1, count + 1)
    )
    with open(conf, "w") as handle:
        handle.write(
            f"""ClusterName=bench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={PORT}
SlurmdPort={PORT + 1}
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation={tmp}/state
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmctldLogFile={tmp}/log/slurmctld.log
SlurmdSpoolDir={tmp}/spool/%n
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
{nodes}
PartitionName=batch Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
        )
    os.chmod(tmp, 0o755)
    return conf


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="bvt-bench-batch-")
    conf = write_conf(tmp, args.count)
    env = dict(os.environ, SLURM_CONF=conf)
    subprocess.run(["slurmctld", "-f", conf], check=True, env=env)
    try:
        for _attempt in range(100):
            if (
                "is UP"
                in subprocess.run(["scontrol", "ping"], capture_output=True, text=True, env=env, check=False).stdout
            ):
                break
            time.sleep(0.1)
        names = [f"bn{i}" for i in range(1, args.count + 1)]

        def per_node() -> None:
            for name in names:
                subprocess.run(["scontrol", "-o", "show", "node", name], capture_output=True, check=True, env=env)

        commands = {}

        def bulk(use_json: bool) -> None:
            _batch_slurm._JSON_SUPPORT.clear()
            adapter = get_adapter("slurm", slurm_conf=conf, use_json=use_json)
            view = adapter.bulk_view(names)
            assert len(view) == args.count and all(v.state != "absent" for v in view.values())
            commands["json" if use_json else "text"] = adapter.commands_run

        base, ours, text = [], [], []
        for _round in range(args.repeat):
            base.append(timed(per_node))
            ours.append(timed(lambda: bulk(True)))
            text.append(timed(lambda: bulk(False)))
    finally:
        with open(os.path.join(tmp, "slurmctld.pid")) as handle:
            os.kill(int(handle.read().strip()), signal.SIGTERM)
        time.sleep(0.5)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "nodes": args.count,
        "repeat": args.repeat,
        "per_node_scontrol_seconds": round(statistics.median(base), 3),
        "bulk_view_json_seconds": round(statistics.median(ours), 3),
        "bulk_view_text_seconds": round(statistics.median(text), 3),
        "bulk_view_json_commands": commands.get("json"),
        "bulk_view_text_commands": commands.get("text"),
        "speedup_json": round(statistics.median(base) / statistics.median(ours), 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
