"""End to end on the REAL farm (slurmctld on the host, two slot VMs under QEMU that registered by
themselves): check-mode plan, a rolling update under long jobs, then recycling an expired slot
with an injected clock. Playbooks run through ansible-runner as AWX runs them (private data dir,
inventory = the batchvirt.farm.slots plugin file, extra vars), and the tests read the job events."""

from __future__ import annotations

import os
import shlex
import time

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time
from tests.integration.farm import farmbed

pytestmark = pytest.mark.slow

SHARE = 0.5  # two slots: one at a time, the other keeps taking jobs


def _debug_msg(result, task: str):
    res = result.results(task)
    assert res, f"task {task!r} did not run:\n{result.stdout[-4000:]}"
    return res[-1].get("msg", res[-1])


def _summary(result, var: str):
    for res in result.results("Show the summary"):
        if var in res:
            return res[var]
    raise AssertionError(f"no summary in the job events:\n{result.stdout[-4000:]}")


def test_rolling_update_check_mode_shows_the_plan_and_touches_nothing(farm):
    before = farm.metadata()
    result = farm.run("rolling_update.yml", check=True, farm_rolling_update_min_capacity_share=SHARE)
    assert result.rc == 0, result.stdout[-4000:]
    plan = _debug_msg(result, "Show the plan")
    assert plan["accepting"] == 2 and plan["batch_size"] == 1, plan
    assert sorted(sum(plan["batches"], [])) == farm.names and all(len(b) == 1 for b in plan["batches"]), plan
    # nothing ran against the slots, the batch system or libvirt
    assert not result.task_events("Drain the batch node and wait until drained")
    assert farm.metadata() == before
    assert farm.accepting() == farm.count


def test_rolling_update_replaces_every_slot_without_losing_a_job(farm):
    start = time.monotonic()
    previous = farm.versions[-1]
    version = str(int(previous) + 1)
    # the "security update": a new version of the worker image, made by the golden node (booted
    # from the worker image, configured over SSH, sealed, shut down, flattened and compressed)
    golden = farm.golden_version()
    farm.stage_version(version, path=golden["path"])
    old = farm.metadata()
    assert {farmbed.version_of(m) for m in old.values()} == {previous}

    jobs = {name: farm.submit(name, 60) for name in farm.names}
    deadline = time.monotonic() + 60
    while farm.running_jobs() != dict.fromkeys(farm.names, 1):
        assert time.monotonic() < deadline, f"jobs did not start: {farm.running_jobs()} {farm.node_states()}"
        time.sleep(1)

    sampler = farmbed.CapacitySampler(farm)
    sampler.start()
    try:
        t0 = time.monotonic()
        result = farm.run(
            "rolling_update.yml",
            farm_rolling_update_min_capacity_share=SHARE,
            farm_rolling_update_reason="bvt security update",
        )
        update_seconds = time.monotonic() - t0
    finally:
        sampler.stop()
    assert result.rc == 0, result.stdout[-6000:]

    # every job that was running finished with exit 0 (sbatch --wait returns the job's exit code)
    for name, proc in jobs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"job on {name} ended with {proc.returncode}: {out} {err}"

    # every slot runs the new version, same names, and takes jobs again
    new = farm.metadata()
    assert sorted(new) == farm.names
    assert {n: farmbed.version_of(m) for n, m in new.items()} == dict.fromkeys(farm.names, version)
    assert all(new[n]["created_at"] > old[n]["created_at"] for n in farm.names)
    assert all(new[n]["ssh"]["port"] == old[n]["ssh"]["port"] for n in farm.names)
    farm.wait_accepting(timeout=120)  # the last job's epilog may still run on its node
    # VMs booted from the golden image registered by themselves and run jobs
    for name in farm.names:
        proc = farm.submit(name, 1)
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"a job on the replaced {name} ended with {proc.returncode}: {out} {err}"

    # capacity never fell below the configured share, and the update really took slots out
    assert sampler.samples, "no capacity samples"
    assert sampler.min_share() >= SHARE, [s[1:] for s in sampler.samples if s[1] < farm.count * SHARE]
    assert any(count < farm.count for _t, count, _s in sampler.samples), "no slot was ever out of service"

    summary = _summary(result, "farm_rolling_update_summary")
    assert sorted(summary["updated"]) == farm.names, summary
    assert all(v["version"] == version and v["previous_version"] == previous for v in summary["updated"].values()), (
        summary
    )
    assert summary["left_draining"] == {}, summary
    # the drain waited for the jobs (job events of the batch_node task)
    drains = result.results("Drain the batch node and wait until drained")
    assert len(drains) == farm.count and all(d.get("changed") for d in drains), drains
    farm.timings["rolling_update"] = update_seconds
    farm.timings["rolling_update_test"] = time.monotonic() - start
    print(f"rolling update: {update_seconds:.0f} s, min capacity share {sampler.min_share():.2f}")

    # a second run has nothing to do: every slot already runs the newest version
    again = farm.run("rolling_update.yml", farm_rolling_update_min_capacity_share=SHARE)
    assert again.rc == 0, again.stdout[-4000:]
    summary = _summary(again, "farm_rolling_update_summary")
    assert summary["updated"] == {} and sorted(summary["up_to_date"]) == farm.names, summary
    assert farm.metadata() == new


def test_recycle_replaces_only_the_expired_slot(farm):
    before = farm.metadata()
    first, second = sorted(before, key=lambda n: before[n]["deadline"])
    assert before[first]["deadline"] < before[second]["drain_at"], (
        "the test needs the second slot created after the first one's deadline (max_job_walltime=10)",
        before,
    )
    now = farmbed.iso(before[first]["deadline"], 5)  # past the first slot's deadline only
    result = farm.run("recycle.yml", now=now)
    assert result.rc == 0, result.stdout[-6000:]
    plan = _debug_msg(result, "Show what will be recycled")
    assert plan["replace_expired"] == [first], plan
    assert second in plan["left_alone"] and plan["replace_drained"] == [], plan

    after = farm.metadata()
    assert after[first]["created_at"] == now, (after[first], now)  # re-created "at" the injected time
    assert after[first]["running"] and farmbed.version_of(after[first]) == farm.versions[-1]
    assert after[second] == before[second], "recycle must not touch a slot that is not drained, expired or stopped"
    summary = _summary(result, "farm_recycle_summary")
    assert list(summary["replaced"]) == [first] and summary["replaced"][first]["lifecycle"] == "expired", summary
    assert farm.accepting() == farm.count, farm.node_states()

    # safe to run again at once: nothing left to do, nothing changed
    again = farm.run("recycle.yml", now=now)
    assert again.rc == 0, again.stdout[-4000:]
    assert not again.changed, again.changed_tasks()
    assert farm.metadata() == after


def test_jobs_read_the_slot_deadline_in_machinefeatures(farm):
    """HEPiX MJF from the VM's creation: a job (login shell, as pilots start) on each node finds
    $MACHINEFEATURES/shutdowntime equal to the slot's deadline; the job's exit code says so."""
    for name, meta in sorted(farm.metadata().items()):
        deadline = int(parse_time(meta["deadline"], "deadline").timestamp())
        check = (
            f'test "$MACHINEFEATURES" = /etc/machinefeatures && test "$(cat "$MACHINEFEATURES/shutdowntime")" = {deadline}'
            ' && test "$(cat "$MACHINEFEATURES/total_cpu")" -ge 1 && test ! -e "$MACHINEFEATURES/hs06"'
        )
        job = farm.submit(name, 0, command=f"bash -lc {shlex.quote(check)}")
        _out, err = job.communicate(timeout=300)
        assert job.returncode == 0, (name, deadline, err)


def test_removing_a_slot_shuts_its_guest_down_by_acpi_first(farm):
    """Keep this test last: it removes one slot for good (the session teardown removes the rest).
    The Debian worker runs systemd, which powers off on the ACPI power button: its shutdown is in
    the console log the module read before it deleted the log, and nothing was destroyed."""
    name = sorted(farm.metadata())[-1]
    entry = [e for e in farm.slot_entries() if e["name"] == name]
    result = farmbed.run_playbook(
        os.path.join(farmbed.PLAYBOOKS, "slots.yml"),
        extravars=dict(farm.extravars, bvt_slots=entry, bvt_state="absent", bvt_force=True),
    )
    assert result.rc == 0, result.stdout[-4000:]
    end = result.results("Create and start the slots")[0]["slots"][0]["end"]
    assert end["how"] == "acpi", end
    assert end["seconds"] < 60, end
    assert end["reason_code"] == 100, end  # removed with force while it ran: as requested
    console = "\n".join(end["console_tail"])
    assert "Power-Off" in console or "reboot: Power down" in console, console
    assert name not in farm.metadata()
