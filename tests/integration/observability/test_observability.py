"""Observability end to end on this machine: slot domains with the collection's metadata on the
real libvirtd (two started, one stopped), a real image cache, accounting through the task file
the lifecycle plays include, metrics through playbooks/tasks/metrics.yml; Debian's
prometheus-node-exporter serves them, a real Prometheus scrapes them and answers the queries;
promtool checks the file; playbooks/report.yml draws the page, headless Chromium opens it."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import yaml

from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import SlotMetadata
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time
from tests.integration.inventory.farm_xml import qemu_domain_xml
from tests.testbed.ansible import ROOT, run_playbook

HERE = os.path.dirname(os.path.abspath(__file__))
SCREENSHOT = os.path.join(ROOT, "docs", "images", "observability-report.png")
UTC = datetime.timezone.utc


def meta(name, identifier, version, created, worker_type="", drain=False, days=7):
    return SlotMetadata(
        name=name,
        hypervisor="localhost",
        image_identifier=identifier,
        image_version=version,
        image_sha512="cd" * 64,
        created_at=created,
        drain_at=created + datetime.timedelta(days=days),
        deadline=created + datetime.timedelta(days=days + 1),
        worker_type=worker_type,
        drain_requested=drain,
        drain_reason="kernel update" if drain else "",
        drain_requested_at=created + datetime.timedelta(hours=1) if drain else None,
    )


def history(now):
    """Earlier VM lives on three hypervisors while the image rolled from 2026.11.1 to 2026.12.1."""
    lives = []
    versions = ["2026.11.1", "2026.11.2", "2026.12.1"]
    for hv in ("hv01", "hv02", "hv03"):
        for slot in range(4):
            start = now - datetime.timedelta(days=9, hours=slot * 3 + int(hv[-1]))
            for generation, version in enumerate(versions):
                created = start + datetime.timedelta(days=3 * generation)
                if created > now - datetime.timedelta(hours=2):
                    break
                ended = created + datetime.timedelta(days=3, hours=-1)
                record = {
                    "slot": f"{hv}-w{slot}",
                    "hypervisor": hv,
                    "worker_type": "gpu" if slot == 3 else "default",
                    "image_identifier": "worker-el9",
                    "image_version": version,
                    "image_sha512": "ab" * 64,
                    "cores": 8 if slot == 3 else 4,
                    "memory_mib": 16384,
                    "created": format_time(created),
                    "registered": format_time(created + datetime.timedelta(minutes=4)),
                    "jobs": 20 + slot + generation,
                }
                if ended < now:
                    failed = (slot + generation) % 5 == 4
                    record.update(
                        drain_started=format_time(ended - datetime.timedelta(hours=6)),
                        ended=format_time(ended if not failed else created + datetime.timedelta(hours=9)),
                        end_reason="failed" if failed else "rolling_update",
                    )
                    if failed:
                        del record["drain_started"]
                lives.append(record)
    return lives


def chromium(*args, tmp):
    profile = os.path.join(tmp, "chromium-profile")
    cmd = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
        "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def test_metrics_accounting_and_report(libvirt_uri, testbed, monitoring):
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    identifier = testbed.name("obs").replace("bvt-", "img-")
    names = {k: testbed.domain(testbed.name(f"obs-{k}")) for k in ("active", "draining", "stopped")}
    conn = testbed.conn
    conn.defineXML(
        qemu_domain_xml(
            names["active"], meta(names["active"], identifier, "2026.12.1", now - datetime.timedelta(days=1))
        )
    )
    conn.defineXML(
        qemu_domain_xml(
            names["draining"],
            meta(names["draining"], identifier, "2026.11.2", now - datetime.timedelta(days=2), "gpu", drain=True),
        )
    )
    conn.defineXML(
        qemu_domain_xml(
            names["stopped"], meta(names["stopped"], identifier, "2026.11.2", now - datetime.timedelta(days=3))
        )
    )
    conn.lookupByName(names["active"]).create()
    conn.lookupByName(names["draining"]).create()

    tmp = testbed.tmp
    image_file = os.path.join(tmp, "image.raw")
    with open(image_file, "wb") as handle:
        handle.write(os.urandom(3 * 1024 * 1024))
    with open(image_file, "rb") as handle:
        sha512 = hashlib.sha512(handle.read()).hexdigest()
    image_root = os.path.join(tmp, "images")
    accounting = os.path.join(tmp, "accounting", "accounting.sqlite")
    state_path = os.path.join(tmp, "metrics-state.json")

    inventory = os.path.join(tmp, "inventory")
    os.makedirs(inventory)
    with open(os.path.join(inventory, "00-hosts.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(
            {"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}},
                     "children": {"hypervisors": {"hosts": {"localhost": {}}}}}},
            handle,
        )  # fmt: skip
    with open(os.path.join(inventory, "farm.farm.slots.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(
            {"plugin": "batchvirt.farm.slots", "hypervisors": [{"uri": libvirt_uri, "name": "localhost"}]}, handle
        )

    extravars = {
        "obs_repo": ROOT,
        "obs_image": identifier,
        "obs_image_file": image_file,
        "obs_image_sha512": sha512,
        "obs_image_size": 3 * 1024 * 1024,
        "obs_image_root": image_root,
        "obs_slots": sorted(names.values()),
        "obs_history": history(now),
        "farm_accounting_path": accounting,
        "farm_metrics_image_root": image_root,
        "farm_metrics_state_path": state_path,
        "farm_metrics_textfile_dir": monitoring.textfile_dir,
        "farm_metrics_started": format_time(now),
    }
    result = run_playbook(os.path.join(HERE, "playbooks", "observe.yml"), extravars=extravars, inventory=inventory)
    assert result.rc == 0, result.stdout[-5000:]
    prom_file = os.path.join(monitoring.textfile_dir, "batchvirt_farm.prom")

    # promtool accepts the file
    with open(prom_file, "rb") as handle:
        check = subprocess.run(["promtool", "check", "metrics"], stdin=handle, capture_output=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    # Prometheus scraped it through node_exporter and shows what the farm is
    mine = f'image="{identifier}"'
    monitoring.wait_for(f"batchvirt_farm_slots{{{mine}}}")
    assert monitoring.value('up{job="node"}') == 1
    assert monitoring.value("node_textfile_scrape_error") == 0
    assert (
        monitoring.value(
            f'batchvirt_farm_slots{{{mine},lifecycle="active",worker_type="default",image_version="2026.12.1"}}'
        )
        == 1
    )
    assert monitoring.value(f'batchvirt_farm_slots{{{mine},lifecycle="draining",worker_type="gpu"}}') == 1
    assert monitoring.value(f'batchvirt_farm_slots{{{mine},lifecycle="stopped",image_version="2026.11.2"}}') == 1
    assert monitoring.value(f"sum(batchvirt_farm_slots{{{mine}}})") == 3
    assert monitoring.value('batchvirt_farm_accepting_vcpus{hypervisor="localhost",worker_type="gpu"}') >= 0
    assert monitoring.value('batchvirt_farm_image_cache_images{hypervisor="localhost",state="ready"}') == 1
    assert monitoring.value('batchvirt_farm_image_cache_images{hypervisor="localhost",state="failed"}') == 1
    assert monitoring.value('batchvirt_farm_image_cache_bytes{hypervisor="localhost",state="ready"}') == 3 * 1024 * 1024
    assert monitoring.value('batchvirt_farm_failures_total{hypervisor="localhost",kind="image_stage"}') == 1
    age = monitoring.value('time() - batchvirt_farm_image_cache_newest_ready_timestamp_seconds{hypervisor="localhost"}')
    assert 0 <= age < 600
    assert monitoring.value('batchvirt_farm_play_last_run_success{hypervisor="localhost",play="recycle"}') == 1
    assert (
        monitoring.value('batchvirt_farm_play_runs_total{hypervisor="localhost",play="recycle",outcome="success"}') == 1
    )
    assert monitoring.value('batchvirt_farm_vm_lives_ended_total{hypervisor="localhost",end_reason="failed"}') >= 1
    assert monitoring.value('batchvirt_farm_vm_lives_open{hypervisor="localhost"}') >= 2
    free = monitoring.value('batchvirt_farm_free_memory_bytes{hypervisor="localhost"}')
    assert free != 0

    # every query of the Grafana dashboard is valid PromQL and, but for rates, has data here
    with open(os.path.join(ROOT, "docs", "grafana", "batchvirt-farm.json"), encoding="utf-8") as handle:
        dashboard = json.load(handle)
    empty = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = target["expr"].replace("$hypervisor", ".*")
            if not monitoring.query(expr):
                empty.append(expr)
    assert all("increase(" in e or "backoff" in e for e in empty), empty

    # the accounting records of the test's slots, written through playbooks/tasks/accounting.yml
    from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import AccountingStore

    with AccountingStore(accounting, create=False) as store:
        mine_lives = {r["slot"]: r for r in store.query(image_identifier=identifier)}
    assert sorted(mine_lives) == sorted(names.values())
    stopped = mine_lives[names["stopped"]]
    assert (stopped["end_reason"], stopped["cores"], stopped["memory_mib"]) == ("failed", 1, 64)
    assert stopped["ended"] is not None and stopped["registered"] is None
    draining = mine_lives[names["draining"]]
    assert draining["worker_type"] == "gpu" and draining["drain_started"] and draining["registered"]
    assert mine_lives[names["active"]]["ended"] is None

    # a second run of the same plays writes no accounting record twice
    result = run_playbook(os.path.join(HERE, "playbooks", "observe.yml"), extravars=extravars, inventory=inventory)
    assert result.rc == 0, result.stdout[-5000:]
    with AccountingStore(accounting, create=False) as store:
        assert len(store.query()) == len(extravars["obs_history"]) + 3

    # the report page
    page = os.path.join(tmp, "report.html")
    result = run_playbook(
        "playbooks/report.yml",
        extravars={
            "farm_report_dest": page,
            "farm_report_accounting_path": accounting,
            "farm_report_title": "batchvirt.farm: test farm",
        },
        inventory=inventory,
    )
    assert result.rc == 0, result.stdout[-5000:]
    html = open(page, encoding="utf-8").read()  # noqa: SIM115
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)
    dom = chromium("--dump-dom", "file://" + page, tmp=tmp)
    assert dom.returncode == 0, dom.stderr[-3000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert dom.stdout.count('class="main-svg"') >= 8  # each of the four plots draws its SVG layers
    for div in ("farm-map", "farm-rollout", "farm-capacity", "farm-events"):
        assert re.search(f'id="{div}"[^>]*class="[^"]*js-plotly-plot', dom.stdout), div
    assert names["active"] in dom.stdout  # the map's hover text holds the slot names
    shot = os.path.join(tmp, "report.png")
    run = chromium("--screenshot=" + shot, "--window-size=1280,1800", "--hide-scrollbars", "file://" + page, tmp=tmp)
    assert run.returncode == 0 and os.path.getsize(shot) > 20000, run.stderr[-3000:]
    os.makedirs(os.path.dirname(SCREENSHOT), exist_ok=True)
    shutil.copyfile(shot, SCREENSHOT)
