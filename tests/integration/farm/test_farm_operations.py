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
    return result.summary(var)


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
    # the metrics task records this run of the play, which is not a change of the farm
    assert again.changed_tasks() == [], again.changed_tasks()
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


# -- one operation owns a slot at a time ---------------------------------------------------
# The patch command runs "inside the VM": on this test farm the slot hosts are reached with
# ansible_connection=local (the slots take no SSH key), so the "patch" is a sleep on the host that
# keeps the slot drained long enough for recycle.yml to see it.
PATCH = {
    "farm_rolling_update_mode": "patch",
    "ansible_connection": "local",
    "farm_rolling_update_patch_command": "true",
}


def _lock_path(farm):
    return farm.extravars["farm_ops_lock_path"]


def _start_jobs(farm, seconds):
    farm.wait_accepting(timeout=300)
    jobs = {name: farm.submit(name, seconds) for name in farm.names}
    deadline = time.monotonic() + 120
    while farm.running_jobs() != dict.fromkeys(farm.names, 1):
        assert time.monotonic() < deadline, f"jobs did not start: {farm.running_jobs()} {farm.node_states()}"
        time.sleep(1)
    return jobs


def _assert_jobs_ok(jobs):
    for name, proc in jobs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"job on {name} ended with {proc.returncode}: {out} {err}"


def test_recycle_leaves_a_slot_alone_while_a_patch_rolling_update_drains_it(farm):
    import threading

    before = farm.metadata()
    jobs = _start_jobs(farm, 40)
    outcome = {}
    # the "patch" holds its slot drained until the test has seen what it wants (at most 300 s): the
    # gate file is made after step 2, so the second slot's patch returns at once
    gate = os.path.join(farm.tmp, "patch-gate")
    if os.path.exists(gate):
        os.unlink(gate)
    patch = f"for i in $(seq 300); do test -e {shlex.quote(gate)} && exit 0; sleep 1; done; exit 1"

    def update():
        outcome["result"] = farm.run(
            "rolling_update.yml",
            farm_rolling_update_min_capacity_share=SHARE,
            farm_rolling_update_reason="bvt patch",
            **dict(PATCH, farm_rolling_update_patch_command=patch),
        )

    runner = threading.Thread(target=update, daemon=True)
    runner.start()

    # 1. while the rolling update drains (jobs still run), a recycle run finds the farm busy
    deadline = time.monotonic() + 300
    while not any(m["drain"]["owner"] == "rolling_update" for m in farm.metadata().values()):
        assert runner.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(1)
    busy = farm.run("recycle.yml")
    assert busy.rc == 0, busy.stdout[-4000:]
    message = [r["msg"] for r in busy.results("Report that the farm is busy with another operation") if "msg" in r]
    assert message and "held by rolling_update" in message[0], busy.stdout[-4000:]
    assert not busy.results("Remove the slot")

    # 2. once the slot's job has ended and the patch runs, the slot is `drained` in the batch
    # system: recycle without the lock (a site that turned it off, or an old schedule) must still
    # leave it alone, because a live rolling update owns its drain
    deadline = time.monotonic() + 300
    drained = None
    while drained is None:
        assert runner.is_alive() and time.monotonic() < deadline, ("no drained slot seen", outcome)
        states = farm.node_states()
        meta = farm.metadata()
        drained = next(
            (
                n
                for n in farm.names
                if states.get(n, "").rstrip("*") == "drained" and meta[n]["drain"]["owner"] == "rolling_update"
            ),
            None,
        )
        time.sleep(1)
    unlocked = farm.run("recycle.yml", farm_ops_lock_enabled=False)
    assert unlocked.rc == 0, unlocked.stdout[-4000:]
    summary = _summary(unlocked, "farm_recycle_summary")
    assert drained in summary["owned_by_another_operation"], summary
    assert "owned by rolling_update" in summary["owned_by_another_operation"][drained]["msg"], summary
    assert summary["replaced"] == {}, summary
    with open(gate, "w"):
        pass

    runner.join(900)
    result = outcome["result"]
    assert result.rc == 0, result.stdout[-6000:]
    _assert_jobs_ok(jobs)
    after = farm.metadata()
    # no slot was re-created (same creation time), and the patched slots no longer carry a drain
    assert {n: after[n]["created_at"] for n in farm.names} == {n: before[n]["created_at"] for n in farm.names}
    assert all(not after[n]["drain"]["requested"] for n in farm.names), after
    summary = _summary(result, "farm_rolling_update_summary")
    assert sorted(summary["updated"]) == farm.names and summary["failed"] == {}, summary
    assert not os.path.exists(_lock_path(farm)), "the lock must be released at the end"
    farm.wait_accepting(timeout=300)


def _ansible_playbook(farm, playbook, **extra):
    """ansible-playbook in its own process group (so that the test can kill it as a crash would)."""
    import json
    import subprocess
    import sys

    from tests.testbed.ansible import COLLECTIONS, ROOT

    extravars = os.path.join(farm.tmp, "killed-extravars.json")
    with open(extravars, "w") as handle:
        json.dump(dict(farm.extravars, **extra), handle)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_HOST_KEY_CHECKING="False",
        SLURM_CONF=farmbed.SLURM_CONF,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    return subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible-playbook"),
            "-i",
            farm.inventory,
            "-e",
            "@" + extravars,
            os.path.join(ROOT, "playbooks", playbook),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_a_killed_rolling_update_holds_the_farm_until_its_lock_expires(farm):
    import signal

    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect
    from ansible_collections.batchvirt.farm.plugins.module_utils._oplock import OperationsLock
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_claim import run_claims
    from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time, utcnow

    ttl = 60
    jobs = _start_jobs(farm, 45)
    proc = _ansible_playbook(
        farm,
        "rolling_update.yml",
        farm_rolling_update_min_capacity_share=SHARE,
        farm_rolling_update_lock_ttl=ttl,
        **PATCH,
    )
    lock = OperationsLock(_lock_path(farm))
    claimed = None
    try:
        deadline = time.monotonic() + 300
        while claimed is None:  # mid-drain: claimed in its metadata, draining in Slurm, its job running
            assert proc.poll() is None and time.monotonic() < deadline, "the rolling update ended before it drained"
            meta = farm.metadata()
            states = farm.node_states()
            claimed = next(
                (
                    n
                    for n in farm.names
                    if meta[n]["drain"]["owner"] == "rolling_update" and "drain" in states.get(n, "")
                ),
                None,
            )
            time.sleep(0.5)
        record = lock.read()
        # the holder is the ansible-playbook process that was started (its pid, this host)
        assert record["operation"] == "rolling_update" and record["holder"]["pid"] == proc.pid, record
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the crash: no `always`, no release
        proc.wait(60)
    assert lock.read() == record, "a killed run cannot release its lock"

    # at once: the next run finds the farm held by the dead run and ends cleanly, naming it
    blocked = farm.run("rolling_update.yml", farm_rolling_update_min_capacity_share=SHARE, **PATCH)
    assert blocked.rc == 0, blocked.stdout[-4000:]
    message = [r["msg"] for r in blocked.results("Report that the farm is busy with another operation") if "msg" in r]
    assert message and f"pid {proc.pid}" in message[0] and record["expires_at"] in message[0], blocked.stdout[-4000:]
    assert not blocked.results("Drain the batch node and wait until drained")

    # after the expiry: the next run takes the lock over and updates what is active
    wait = (parse_time(record["expires_at"]) - utcnow()).total_seconds()
    if wait > 0:
        time.sleep(wait + 1)
    after = farm.run("rolling_update.yml", farm_rolling_update_min_capacity_share=SHARE, **PATCH)
    assert after.rc == 0, after.stdout[-6000:]
    taken = [r["msg"] for r in after.results("Report the expired lock this run took over") if "msg" in r]
    assert taken and f"pid {proc.pid}" in taken[0], after.stdout[-4000:]
    summary = _summary(after, "farm_rolling_update_summary")
    others = [n for n in farm.names if n != claimed]
    assert sorted(summary["updated"]) == others, summary  # the slot the dead run drained is not active
    assert lock.read() is None, "the run that took over released the lock at its end"
    _assert_jobs_ok(jobs)

    # put the farm back: the dead run's drain is cleared by hand, as an operator would
    conn = connect("qemu:///system")
    try:
        run_claims(conn, [claimed], "cleared", "rolling_update", "", "", "", utcnow(), force=True)
    finally:
        conn.close()
    farmbed.slurm("scontrol", "update", f"nodename={claimed}", "state=resume", check=False)
    farm.wait_accepting(timeout=300)


def _set_failures(name: str, consecutive: int, image: str) -> None:
    """Inject earlier failed lives into a slot's metadata (as recycle.yml would have carried them)."""
    import libvirt

    from ansible_collections.batchvirt.farm.plugins.module_utils._slot import read_metadata
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import NAMESPACE, PREFIX, to_xml
    from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import utcnow

    conn = libvirt.open("qemu:///system")
    try:
        dom = conn.lookupByName(name)
        meta = read_metadata(dom).with_failures(consecutive, utcnow(), image, "injected", None)
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
        dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, to_xml(meta, namespaced=False), PREFIX, NAMESPACE, flags)
    finally:
        conn.close()


def _assert_a_new_slot_avoids(bad: str) -> None:
    """While ``bad`` is in back-off here, what recreate_slot.yml asks before it removes another slot
    (the slot module's image resolution with ``image.avoid``, on this hypervisor's real cache) never
    gives ``bad``: another deployable version, or a refusal naming image.avoid (the slot is held)."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot import SlotError
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_image import resolve_image

    spec = {"identifier": farmbed.IDENTIFIER, "version": "latest", "cache_root": farmbed.IMAGE_ROOT}
    newest = resolve_image(spec).version
    try:
        chosen = resolve_image(dict(spec, avoid=[bad])).version
    except SlotError as exc:
        assert exc.option == "image.avoid" and f"avoided ({bad})" in str(exc), exc
        assert newest == bad, "refused although another version is deployable"
    else:
        assert chosen != bad and newest in (bad, chosen), (bad, newest, chosen)


def _kill_slurmd_reachability(farm, name: str) -> None:
    """slurmd of the slot stops answering the controller, as when it dies: its forward on the host is
    removed from the running QEMU (so no registration request reaches it any more) and the node is set
    down at once (rather than after SlurmdTimeout)."""
    import subprocess

    port = farmbed.SLURMD_PORT_BASE + farm.names.index(name)
    subprocess.run(
        [
            "virsh",
            "-c",
            "qemu:///system",
            "qemu-monitor-command",
            name,
            "--hmp",
            f"hostfwd_remove hn0 tcp:127.0.0.1:{port}",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    farmbed.slurm("scontrol", "update", f"nodename={name}", "state=down", "reason=bvt: slurmd killed")


# a contextualization that fails on purpose: bootcmd (cloud-init's first step, before slurmd's start
# is due) masks slurmd, so the registration's restart of it fails and the VM never registers
BROKEN_CLOUD_INIT = {"bootcmd": [["systemctl", "mask", "--now", "slurmd"]]}


def _accounted_end(slot: str, created: str) -> tuple:
    """(end_reason, ended) of one VM life in this hypervisor's accounting (the plays' default path)."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import AccountingStore

    with AccountingStore("/var/lib/batchvirt/accounting.sqlite", create=False) as store:
        lives = [r for r in store.query(slot=slot) if r["created"] == created]
    assert len(lives) == 1, (slot, created, lives)
    return lives[0]["end_reason"], lives[0]["ended"]


def test_a_failed_slot_backs_off_after_k_failures_then_is_replaced_and_runs_a_job(farm):
    """Its slurmd gone (the node down in Slurm for longer than the health grace: injected clock), a
    slot with two failed lives before is `failed`; recycle.yml counts the third failure and backs off
    (VM shut down, domain and count kept, console tail in the summary, the metric counts it) instead
    of re-creating it; a run within the back-off leaves the stopped slot alone (not started again);
    after the back-off it is re-created, but from a contextualization that fails on purpose (its
    cloud-init masks slurmd): the VM boots and never registers, so once the boot grace has passed
    it is `failed` again and, its count over the threshold, backs off twice as long instead of
    being rebooted; after that back-off it is re-created with the farm's own cloud-init, registers,
    is resumed, its count is cleared, and a job runs on it. Two VM boots in all."""
    from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, utcnow

    before = farm.metadata()
    # the slot created in real time: the expired-slot test re-created the other one "a week ahead"
    # (injected clock), and the accounting refuses a life that ends before it was created
    name = min(before, key=lambda n: before[n]["created_at"])
    assert before[name]["created_at"] <= format_time(utcnow()), before
    other = [n for n in farm.names if n != name]
    farm.wait_accepting(timeout=300)
    _set_failures(name, 2, f"{farmbed.IDENTIFIER}/{farmbed.version_of(before[name])}")
    _kill_slurmd_reachability(farm, name)
    assert "down" in farm.node_states()[name], farm.node_states()
    now = farmbed.iso(format_time(utcnow()), 300 + 60)  # down for longer than the health grace (300 s)

    first = farm.run("recycle.yml", now=now)
    assert first.rc == 0, (farm.node_states(), first.stdout[-6000:])
    plan = _debug_msg(first, "Show what will be recycled")
    assert plan["replace_failed"] == [name] and plan["in_backoff"] == {}, (farm.node_states(), plan)
    assert plan["failed_batch_state"] == {name: "down"}, plan
    assert set(other) <= set(plan["left_alone"]), plan
    summary = _summary(first, "farm_recycle_summary")
    assert list(summary["backoff"]) == [name] and summary["replaced"] == {} and summary["failed"] == {}, summary
    entry = summary["backoff"][name]
    until = farmbed.iso(now, 600)  # threshold 3: 600 s * 2 ** 0
    assert entry["backoff_until"] == until and entry["failures"]["consecutive"] == 3, entry
    assert entry["failures"]["reason"].startswith("slurm: ") and entry["failures"]["last_at"] == now, entry
    assert entry["console_tail"] and all(isinstance(line, str) for line in entry["console_tail"]), entry
    held = farm.metadata()
    assert not held[name]["running"] and held[name]["created_at"] == before[name]["created_at"], held[name]
    assert held[name]["failures"]["backoff_until"] == until, held[name]
    assert all(held[n] == before[n] for n in other), "recycle must not touch the healthy slots"
    # the failed life is accounted as its VM stops for the back-off, not only when it is replaced
    assert _accounted_end(name, before[name]["created_at"]) == ("failed", now)
    prom = "/var/lib/prometheus/node-exporter/batchvirt_farm.prom"
    if os.path.exists(prom):  # the metrics the run refreshed (farm_ops_metrics, default on)
        with open(prom) as handle:
            gauge = [line for line in handle if line.startswith("batchvirt_farm_slots_in_backoff{")]
        # the label is the inventory's hypervisor name (farm_hypervisor), "localhost" on this farm
        assert gauge == ['batchvirt_farm_slots_in_backoff{hypervisor="localhost"} 1.0\n'], gauge

    # within the back-off: the stopped slot is left alone (not started again)
    second = farm.run("recycle.yml", now=farmbed.iso(now, 300))
    assert second.rc == 0, second.stdout[-6000:]
    plan = _debug_msg(second, "Show what will be recycled")
    assert plan["in_backoff"] == {name: until} and plan["restart_stopped"] == [], plan
    assert plan["replace_failed"] == [] and plan["replace_after_backoff"] == [], plan
    assert _summary(second, "farm_recycle_summary")["in_backoff"] == {name: until}
    assert farm.metadata()[name] == held[name]
    _assert_a_new_slot_avoids(farmbed.version_of(before[name]))

    # after it: re-created with the count carried, but from a cloud-init that fails on purpose: it
    # never registers, and the run says it could not recycle the slot once its boot timeout passed
    broken_at = farmbed.iso(until, 1)
    broken = farm.run(
        "recycle.yml",
        now=broken_at,
        farm_ops_slot=dict(farm.extravars["farm_ops_slot"], cloud_init=BROKEN_CLOUD_INIT),
        farm_ops_boot_timeout=30,
    )
    assert broken.rc != 0, broken.stdout[-6000:]
    plan = _debug_msg(broken, "Show what will be recycled")
    assert plan["replace_after_backoff"] == [name] and plan["in_backoff"] == {}, plan
    assert list(_summary(broken, "farm_recycle_summary")["failed"]) == [name], broken.stdout[-6000:]
    again = farm.metadata()[name]
    assert again["running"] and again["created_at"] == broken_at, again
    assert again["failures"]["consecutive"] == 3, "the count is carried to the new life"
    assert farm.node_states()[name].rstrip("*") not in ("idle", "allocated", "mixed"), farm.node_states()

    # the boot grace (900 s) has passed: failed, the 4th failure backs off twice as long (1200 s),
    # the VM is shut down rather than rebooted, and its life is accounted as failed
    past_grace = farmbed.iso(broken_at, 900 + 1)
    fourth = farm.run("recycle.yml", now=past_grace, farm_recycle_failed_shutdown_timeout=5)
    assert fourth.rc == 0, fourth.stdout[-6000:]
    plan = _debug_msg(fourth, "Show what will be recycled")
    assert plan["replace_failed"] == [name], (farm.node_states(), plan)
    summary = _summary(fourth, "farm_recycle_summary")
    assert list(summary["backoff"]) == [name] and summary["replaced"] == {}, summary
    until = farmbed.iso(past_grace, 1200)  # 600 s * 2 ** (4 - 3)
    entry = summary["backoff"][name]
    assert entry["backoff_until"] == until and entry["failures"]["consecutive"] == 4, entry
    assert entry["console_tail"], entry
    assert not farm.metadata()[name]["running"], "a slot in back-off is shut down, not rebooted"
    assert _accounted_end(name, broken_at) == ("failed", past_grace)

    # after that back-off: re-created with the farm's own cloud-init, count carried, resumed, cleared
    later = farmbed.iso(until, 1)
    third = farm.run("recycle.yml", now=later)
    assert third.rc == 0, third.stdout[-6000:]
    plan = _debug_msg(third, "Show what will be recycled")
    assert plan["replace_after_backoff"] == [name] and plan["in_backoff"] == {}, plan
    summary = _summary(third, "farm_recycle_summary")
    assert list(summary["replaced"]) == [name], summary
    assert summary["replaced"][name]["failures"]["consecutive"] == 4, summary
    after = farm.metadata()
    assert after[name]["running"] and after[name]["created_at"] == later, after[name]
    assert farmbed.version_of(after[name]) == farm.versions[-1]
    assert "failures" not in after[name], "the count is cleared once the new slot is resumed"
    # the replacement found that life's record closed: it keeps its end and reason
    assert _accounted_end(name, before[name]["created_at"]) == ("failed", now)
    farm.wait_accepting(timeout=300)
    job = farm.submit(name, 0, command="true")
    _out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err


def test_removing_a_slot_shuts_its_guest_down_by_acpi_first(farm):
    """Keep this test last: it removes one slot for good (the session teardown removes the rest).
    The Debian worker runs systemd, which powers off on the ACPI power button: its shutdown is in
    the console log the module read before it deleted the log, and nothing was destroyed."""
    # a slot no operation drains (the re-typing test leaves one drained for rebalance: removing that
    # one would rightly record the rebalance's reason, 300 "No more work", not the forced removal's)
    meta = farm.metadata()
    name = next((n for n in sorted(meta, reverse=True) if not meta[n]["drain"]["requested"]), sorted(meta)[-1])
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
