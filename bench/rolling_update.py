"""Rolling update on the REAL test farm against its floor.

The farm: ``tests/integration/farm/farmbed.py`` (hypervisor role, worker image with slurmd + munge,
slurmctld on 127.0.0.1, N slot VMs under QEMU/TCG that register by themselves). Each slot runs one
``sleep`` job of a different length; a new image version is staged; ``playbooks/rolling_update.yml``
runs through ansible-runner with ``farm_rolling_update_min_capacity_share`` = SHARE while a thread
samples ``sinfo`` every second.

The floor (``_rolling.floor_schedule``): the shortest schedule the capacity bound allows — batches of
``batch_size(N, SHARE)`` slots, run one after another, each batch ending one replacement after the
longest remaining job of its slots, slots taken in ascending order of remaining job time (the optimal
order). The remaining job times are known (we submitted the jobs); the replacement time R is the
fastest replacement the run itself achieved (drained -> removed, re-created, booted, registered,
resumed: from the job events), so the ratio measures what the playbook's sequencing, polling and
Ansible overhead add on top of the unavoidable job waits and VM boots.

    .venv/bin/python bench/rolling_update.py [--slots 2] [--share 0.5] [--jobs 40,80]

Last line: JSON with bench, seconds, floor_seconds, ratio_vs_floor, min_capacity_share, jobs_lost.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("ANSIBLE_COLLECTIONS_PATH", os.path.join(ROOT, "build", "collections"))


def _link() -> None:
    link = os.path.join(ROOT, "build", "collections", "ansible_collections", "batchvirt", "farm")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)
    sys.path.insert(0, os.path.join(ROOT, "build", "collections"))


def _ts(event: dict) -> float:
    return datetime.datetime.fromisoformat(event["created"]).timestamp()


def replacement_seconds(result, names) -> dict:
    """Per slot: from its drain being done to its resume being done (job events' timestamps)."""
    done = {}
    for event in result.events:
        data = event.get("event_data", {})
        if event.get("event") != "runner_on_ok":
            continue
        host = data.get("host")
        if data.get("task") == "Drain the batch node and wait until drained":
            done.setdefault(host, {})["drained"] = _ts(event)
        elif data.get("task") == "Let the slot take jobs":
            done.setdefault(host, {})["resumed"] = _ts(event)
    return {h: t["resumed"] - t["drained"] for h, t in done.items() if "drained" in t and "resumed" in t}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--jobs", default="40,80", help="job lengths in seconds, one per slot (cycled)")
    parser.add_argument("--memory", type=int, default=512)
    parser.add_argument("--attach", help="use a farm built earlier by farmbed.build(tmp=ATTACH) and keep it")
    args = parser.parse_args()
    _link()

    from ansible_collections.batchvirt.farm.plugins.module_utils import _rolling
    from tests.integration.farm import farmbed

    lengths = [int(x) for x in args.jobs.split(",")]
    farm = None
    try:
        t_build = time.monotonic()
        if args.attach:
            farm = farmbed.attach(args.attach, count=args.slots, memory_mib=args.memory)
        else:
            farm = farmbed.build(count=args.slots, memory_mib=args.memory)
        build_seconds = time.monotonic() - t_build
        new_version = str(max(int(v) for v in farm.versions) + 1)
        farm.stage_version(new_version)

        jobs = {}
        submitted = {}
        for i, name in enumerate(farm.names):
            jobs[name] = farm.submit(name, lengths[i % len(lengths)])
            submitted[name] = time.monotonic()
        while farm.running_jobs() != dict.fromkeys(farm.names, 1):
            time.sleep(0.5)

        sampler = farmbed.CapacitySampler(farm)
        sampler.start()
        t0 = time.monotonic()
        result = farm.run("rolling_update.yml", farm_rolling_update_min_capacity_share=args.share)
        seconds = time.monotonic() - t0
        sampler.stop()
        if result.rc != 0:
            print(result.stdout[-5000:], file=sys.stderr)
            raise SystemExit("rolling_update.yml failed")

        jobs_lost = 0
        for proc in jobs.values():
            proc.communicate(timeout=300)
            jobs_lost += int(proc.returncode != 0)

        remaining = [max(0.0, lengths[i % len(lengths)] - (t0 - submitted[name])) for i, name in enumerate(farm.names)]
        size = _rolling.batch_size(farm.count, args.share, farm.count)
        per_slot = replacement_seconds(result, farm.names)
        replace = min(per_slot.values())
        floor, order = _rolling.floor_schedule(remaining, size, replace)
        versions = {n: farmbed.version_of(m) for n, m in farm.metadata().items()}
        figures = {
            "bench": "rolling_update",
            "farm": f"real: {args.slots} slot VMs (QEMU TCG, 1 vCPU, {args.memory} MiB), slurmctld on the host",
            "slots": farm.count,
            "min_capacity_share_configured": args.share,
            "batch_size": size,
            "job_remaining_seconds": [round(r, 1) for r in remaining],
            "replacement_seconds": {k: round(v, 1) for k, v in per_slot.items()},
            "seconds": round(seconds, 1),
            "floor_seconds": round(floor, 1),
            "ratio_vs_floor": round(seconds / floor, 3),
            "min_capacity_share": round(sampler.min_share(), 3),
            "jobs_lost": jobs_lost,
            "all_on_new_version": set(versions.values()) == {new_version},
            "farm_build_seconds": round(build_seconds, 1),
        }
        print(json.dumps(figures))
        return 0
    finally:
        if not args.attach:
            farmbed.destroy(farm)


if __name__ == "__main__":
    sys.exit(main())
