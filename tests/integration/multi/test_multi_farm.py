"""A real farm on the multi-hypervisor bed (multifarm.py): ``playbooks/site.yml`` from this machine
against the three hypervisors over SSH, the worker image pre-staged on each, one TCG slot booted
on each, the three workers registered with slurmctld, and a job on each."""

from __future__ import annotations

import os
import time

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
