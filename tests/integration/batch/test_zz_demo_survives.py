"""Runs last in the batch area: the machine's demo-style Slurm controller still answers after
the batch tests (they never touch /etc/slurm or the slurmctld service), and the demo's
teardown (playbooks/demo_clean.yml) leaves the machine as it was before the demo."""

from __future__ import annotations

import hashlib
import os
import subprocess

from tests.testbed import machine


def test_demo_controller_still_answers_after_the_batch_tests(slurm_cluster, demo_controller):
    assert slurm_cluster.slurm_conf != machine.SYSTEM_SLURM_CONF
    with open(machine.SYSTEM_SLURM_CONF, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == demo_controller.conf_digest, (
            "the batch tests changed the machine's slurm.conf"
        )
    proc = subprocess.run(
        ["sinfo", "-h", "-o", "%P %a"],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SLURM_CONF"},
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and "up" in proc.stdout, f"sinfo against the demo's controller: {proc.stderr}"


def test_demo_teardown_leaves_the_machine_as_it_was(demo_controller):
    if not demo_controller.ours:
        import pytest

        pytest.skip("a real demo runs on this machine: its teardown is `make demo-clean`, not a test's")
    # the session's libvirtd, virtlogd and munge may have been started after the demo's record
    # (by the hypervisor role or the Slurm fixtures): the teardown rightly stops them, and the
    # test areas after this one get them back
    shared = machine.shared_daemons_running()
    try:
        first = demo_controller.clean()
        assert first.rc == 0, first.stdout[-4000:]
        differences = machine.diff(demo_controller.before, machine.state())
        assert not differences, "the demo's teardown left the machine changed: %s" % differences
        assert not machine.system_slurm_answers()
        second = demo_controller.clean()
        assert second.rc == 0 and not second.changed, f"a second teardown changed {second.changed_tasks()}"
    finally:
        machine.restart_shared_daemons(shared)
