"""A real farm on the multi-hypervisor bed (multifarm.py): ``playbooks/site.yml`` from this machine
against the three hypervisors over SSH, the worker image pre-staged on each, one TCG slot booted
on each, the three workers registered with slurmctld, and a job on each."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, Dict

import pytest
import yaml

from tests.integration.inventory.conftest import run_inventory
from tests.integration.multi.conftest import TIMINGS
from tests.integration.multi.multifarm import IDENTIFIER, SLURM_CONF, MultiFarm, slurm
from tests.testbed.bed import libvirt

pytestmark = pytest.mark.multihv


def test_site_yml_sets_up_every_hypervisor(multifarm: MultiFarm) -> None:
    site = multifarm.site
    assert site is not None and site.rc == 0
    for hv in multifarm.bed.hypervisors:
        assert hv.name not in site.stats.get("failures", {}), site.stats
        assert hv.name not in site.stats.get("dark", {}), site.stats
        # the image was staged by the image module on that hypervisor, in its own image cache
        staged = [r for r in site.results("Pre-stage the images given without a list") if r]
        assert staged, "no pre-staging result"
        assert hv.exec("test", "-d", "/var/lib/batchvirt/images.cache").returncode == 0


def test_one_slot_runs_on_each_hypervisor(multifarm: MultiFarm) -> None:
    for hv in multifarm.bed.hypervisors:
        conn = libvirt.open(multifarm.bed.uri(hv))
        try:
            running = sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        finally:
            conn.close()
        assert running == [multifarm.nodes[hv.name]], f"{hv.name}: {running}"
        # the overlay lives on that hypervisor, backed by the image staged there
        overlay = hv.path(f"/var/lib/batchvirt/slots/{multifarm.nodes[hv.name]}.qcow2")
        assert os.path.exists(overlay), overlay
        images = hv.exec("ls", "/var/lib/batchvirt/images").stdout
        assert IDENTIFIER in images, images


def test_a_job_on_each_worker(multifarm: MultiFarm) -> None:
    states = multifarm.node_states()
    assert sorted(states) == sorted(multifarm.nodes.values()), states
    for hv in multifarm.bed.hypervisors:
        node = multifarm.nodes[hv.name]
        start = time.monotonic()
        # the job checks where it runs: the guest of that slot (its hostname is the node name)
        done = multifarm.job(node, f'test "$(hostname -s)" = {node} || exit 3')
        TIMINGS[f"farm: job on {node}"] = round(time.monotonic() - start, 1)
        # exit code 3: the job ran on another machine than the node's guest
        assert done.returncode == 0, f"{node}: exit {done.returncode}: {done.stdout} {done.stderr}"
        job_id = done.stdout.split()[-1]
        shown = slurm("scontrol", "show", "job", job_id)
        assert f"BatchHost={node}" in shown, shown
        assert "JobState=COMPLETED" in shown and "ExitCode=0:0" in shown, shown


def test_inventory_sees_the_three_workers_active(multifarm: MultiFarm, tmp_path) -> None:
    """The slots inventory over qemu+ssh:// with the batch view: each worker is active (booted,
    registered, within its lifetime), grouped by its hypervisor, reached through it."""
    hosts = tmp_path / "hypervisors.yml"
    hosts.write_text(yaml.safe_dump(multifarm.inventory()))
    config = tmp_path / "farm.farm.slots.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "plugin": "batchvirt.farm.slots",
                "hypervisor_group": "hypervisors",
                "uri_template": multifarm.bed.uri_template(),
                "batch": {"system": "slurm"},
                "timeout": 30,
            }
        )
    )
    start = time.monotonic()
    run = run_inventory(str(hosts), str(config), env={"SLURM_CONF": SLURM_CONF})
    TIMINGS["farm: inventory refresh with the batch view"] = round(time.monotonic() - start, 1)
    assert run.rc == 0, run.stderr[-3000:]
    for hv in multifarm.bed.hypervisors:
        node = multifarm.nodes[hv.name]
        assert run.hosts(f"farm_hypervisor_{hv.name}") == [node], run.stderr[-2000:]
        hostvars = run.hostvars(node)
        assert hostvars["farm_domain_state"] == "running", hostvars
        assert hostvars["farm_lifecycle"] == "active", (hostvars["farm_lifecycle"], run.stderr[-2000:])
        assert f"ProxyJump=root@{hv.address}:22" in hostvars["ansible_ssh_common_args"], hostvars


def test_a_hypervisor_that_goes_away_is_put_right_by_the_next_recycle(multifarm: MultiFarm, tmp_path) -> None:
    """One hypervisor goes away with its guest, as in a power cut (its sshd and libvirtd stop, its
    QEMU is killed): recycle.yml, run as AWX runs it (the hypervisors' inventory and the slots
    plugin over qemu+ssh://), carries on with the other two, leaves them alone and names the one
    it could not reach. When the hypervisor comes back, the next recycle finds its guest down,
    brings it back, waits until it has registered, and the worker runs a job again."""
    gone = multifarm.bed.hypervisors[-1]
    node = multifarm.nodes[gone.name]
    others = sorted(n for h, n in multifarm.nodes.items() if h != gone.name)
    inventory = multifarm.slots_inventory(str(tmp_path / "inventory"))
    ops: Dict[str, Any] = {
        "farm_ops_lock_path": str(tmp_path / "operations.lock"),
        "farm_ops_poll_interval": 3,
        "farm_ops_boot_timeout": 900,
    }
    gone.stop_daemons()
    # its guest dies with it (found from this machine by its QEMU command line: the name is unique)
    subprocess.run(["pkill", "-9", "-f", f"guest={node},"], check=False)
    try:
        start = time.monotonic()
        away = multifarm.run("recycle.yml", inventory=inventory, **ops)
        TIMINGS["farm: recycle with one hypervisor away"] = round(time.monotonic() - start, 1)
        assert away.rc == 0, away.stdout[-4000:]
        summary = away.summary("farm_recycle_summary")
        assert summary["unreachable_hypervisors"] == [gone.name], summary
        assert not summary["replaced"] and not summary["restarted"] and not summary["failed"], summary
        # the other two kept their workers, untouched and taking jobs
        states = multifarm.node_states()
        assert all(states[n].rstrip("*") in ("idle", "mixed", "allocated") for n in others), states
    finally:
        gone.start_daemons()
        gone.wait_ready()

    start = time.monotonic()
    back = multifarm.run("recycle.yml", inventory=inventory, **ops)
    TIMINGS["farm: recycle after the hypervisor came back (guest booted and registered)"] = round(
        time.monotonic() - start, 1
    )
    assert back.rc == 0, back.stdout[-4000:]
    summary = back.summary("farm_recycle_summary")
    assert summary["unreachable_hypervisors"] == [], summary
    # a guest that went down with its host is `stopped` (started again) or, seen as crashed, `failed` (re-created)
    assert [node] == (summary["restarted"] or list(summary["replaced"])), summary
    done = multifarm.job(node, f'test "$(hostname -s)" = {node} || exit 3')
    assert done.returncode == 0, f"{node}: exit {done.returncode}: {done.stdout} {done.stderr}"
    assert multifarm.node_states()[node].rstrip("*") in ("idle", "mixed", "allocated")
