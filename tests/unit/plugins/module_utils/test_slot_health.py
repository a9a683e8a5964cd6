"""Failed slots and their back-off: the arithmetic, the failure record in the metadata (schema 3,
older schemas still read, an older reader refuses it), the count carried to a replacement and
cleared, and the slot_health work on real libvirt domains (the test driver)."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_health as health
from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_metadata as sm
from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import backoff_until
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import backoff_seconds
from tests.unit.plugins.module_utils.slotmeta import NOW, T0, make

try:
    import libvirt
except ImportError:  # pragma: no cover
    libvirt = None


# -- the arithmetic ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("consecutive", "seconds"),
    [(0, 0), (1, 0), (2, 0), (3, 600), (4, 1200), (5, 2400), (10, 76800), (11, 86400), (40, 86400), (10**6, 86400)],
)
def test_backoff_waits_from_the_threshold_on_doubling_up_to_the_cap(consecutive, seconds):
    assert backoff_seconds(consecutive) == seconds  # defaults: threshold 3, base 600 s, cap 24 h


def test_backoff_settings():
    assert backoff_seconds(1, threshold=1, base=60, cap=100) == 60
    assert backoff_seconds(2, threshold=1, base=60, cap=100) == 100
    assert backoff_seconds(5, threshold=5, base=0, cap=100) == 0
    with pytest.raises(ValueError, match="threshold"):
        backoff_seconds(3, threshold=0)
    with pytest.raises(ValueError, match="0 or more"):
        backoff_seconds(3, base=-1)


def test_each_failed_life_counts_and_the_threshold_starts_the_backoff():
    meta = make()
    first = health.record_failure(meta, NOW, "slurm: down")
    assert (first.failures, first.failure_at, first.failure_image, first.failure_reason) == (
        1,
        NOW,
        "worker-el9/7",
        "slurm: down",
    )
    assert first.backoff_until is None and not first.in_backoff(NOW)
    second = health.record_failure(first, NOW, "slurm: down")
    third = health.record_failure(second, NOW, "slurm: not_responding")
    assert third.failures == 3 and third.backoff_until == NOW + datetime.timedelta(seconds=600)
    assert third.in_backoff(NOW) and not third.in_backoff(NOW + datetime.timedelta(seconds=600))
    fourth = health.record_failure(third, NOW, "x", threshold=3, base=600, cap=900)
    assert fourth.backoff_until == NOW + datetime.timedelta(seconds=900)


# -- the metadata round trip -------------------------------------------------------------------
def test_the_failure_record_round_trips_as_schema_3():
    meta = health.record_failure(
        health.record_failure(health.record_failure(make(), NOW, "a"), NOW, "b"), NOW, "slurm: down <&>"
    )
    text = sm.to_xml(meta)
    assert 'schema="3"' in text
    back = sm.from_xml(text)
    assert back == meta
    assert back.to_dict()["failures"] == {
        "consecutive": 3,
        "last_at": "2026-12-01T11:00:00Z",
        "image": "worker-el9/7",
        "reason": "slurm: down <&>",
        "backoff_until": "2026-12-01T11:10:00Z",
    }
    # libvirt hands the element back without its namespace
    assert sm.from_xml(sm.to_xml(meta, namespaced=False)) == meta


def test_metadata_without_failures_keeps_its_old_schema_and_old_metadata_still_reads():
    assert 'schema="1"' in sm.to_xml(make())
    owned = make().request_drain("x", NOW, "rolling_update", "tok", NOW)
    assert 'schema="2"' in sm.to_xml(owned)
    # written by the collection before schema 3 (no <failures>): reads with no failure record
    schema1 = (
        '<farm:slot xmlns:farm="http://batchvirt.farm/xmlns/slot/1" schema="1"><farm:name>s1</farm:name>'
        '<farm:hypervisor>hv1</farm:hypervisor><farm:image identifier="w" version="1" />'
        "<farm:created_at>2026-12-01T06:00:00Z</farm:created_at><farm:drain_at>2026-12-02T06:00:00Z</farm:drain_at>"
        '<farm:deadline>2026-12-04T06:00:00Z</farm:deadline><farm:batch system="slurm" /></farm:slot>'
    )
    old = sm.from_xml(schema1)
    assert old.failures == 0 and old.backoff_until is None and "failures" not in old.to_dict()
    assert sm.from_xml(sm.to_xml(owned)) == owned and "failures" not in owned.to_dict()
    # a cleared record goes back to the lowest schema
    cleared = health.record_failure(make(), NOW, "x").clear_failures()
    assert cleared == make() and 'schema="1"' in sm.to_xml(cleared)


def test_a_reader_of_schema_2_refuses_a_failure_record_rather_than_restart_a_slot_in_backoff():
    text = sm.to_xml(health.record_failure(make(), NOW, "x"))
    assert int(text.split('schema="', 1)[1].split('"', 1)[0]) > sm.DRAIN_OWNER_SCHEMA_VERSION
    newer = text.replace('schema="3"', 'schema="4"')
    with pytest.raises(sm.SlotMetadataError, match="newer than this collection understands"):
        sm.from_xml(newer)


@pytest.mark.parametrize(
    ("attrs", "option"),
    [
        ('consecutive="many"', "failures.consecutive"),
        ('consecutive="2" at="yesterday"', "failures.at"),
        ('consecutive="-1"', "failures.consecutive"),
        ('consecutive="2" until="soon"', "failures.until"),
    ],
)
def test_a_tampered_failure_record_is_refused_naming_the_field(attrs, option):
    text = sm.to_xml(make()).replace("</farm:slot>", f"<farm:failures {attrs}>x</farm:failures></farm:slot>")
    with pytest.raises(sm.SlotMetadataError) as info:
        sm.from_xml(text)
    assert info.value.option == option


# -- carried to the replacement, cleared once active ----------------------------------------------
def test_the_count_is_carried_to_the_new_slot_without_backoff_and_cleared_when_active():
    failed = health.record_failure(health.record_failure(make(), NOW, "a"), NOW, "slurm: down", threshold=2)
    assert failed.in_backoff(NOW)
    new = make(created_at=NOW, drain_at=NOW + datetime.timedelta(days=1), deadline=NOW + datetime.timedelta(days=2))
    result, carried = health.plan_health(new, "recorded", NOW, record=failed.failures_dict())
    assert result.changed and not result.backoff
    assert (carried.failures, carried.failure_at, carried.failure_image, carried.backoff_until) == (
        2,
        NOW,
        "worker-el9/7",
        None,
    )
    again, same = health.plan_health(carried, "recorded", NOW, record=failed.failures_dict())
    assert not again.changed and same == carried  # idempotent
    cleared_result, cleared = health.plan_health(carried, "healthy", NOW)
    assert cleared_result.changed and cleared == new
    assert not health.plan_health(cleared, "healthy", NOW)[0].changed


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"consecutive": "x"}, "must be a number"),
        ({"consecutive": -2}, "0 or more"),
        ({"consecutive": 1, "last_at": "later"}, "ISO-8601"),
    ],
)
def test_a_bad_carried_record_names_the_option(record, message):
    with pytest.raises(health.SlotHealthError, match=message) as info:
        health.carry_failures(make(), record)
    assert info.value.option == "failures"


def test_a_slot_owned_by_a_live_rolling_update_is_left_alone():
    owned = make().request_drain("patch", NOW, "rolling_update", "ru", NOW + datetime.timedelta(hours=1))
    result, after = health.plan_health(owned, "failed", NOW, "down", operation="rc")
    assert result.left_alone and not result.changed and after == owned


def test_the_inventory_shows_the_backoff_only_until_it_passes():
    meta = health.record_failure(make(failures=2), NOW, "x")
    slot = meta.to_dict()
    assert backoff_until(slot, NOW) == "2026-12-01T11:10:00Z"
    assert backoff_until(slot, NOW + datetime.timedelta(seconds=600)) is None
    assert backoff_until(make().to_dict(), NOW) is None


# -- on libvirt domains (the test driver) -------------------------------------------------------
DOMAIN = """<domain type='test'><name>{name}</name><memory>65536</memory><os><type>hvm</type></os>
<metadata>{meta}</metadata></domain>"""


@pytest.fixture
def conn():
    if libvirt is None:
        pytest.skip("libvirt-python missing")
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    c = connect("test:///default")
    dom = c.defineXML(
        DOMAIN.format(
            name="hv1-slot-01",
            meta=sm.to_xml(make(failures=2, failure_at=T0, failure_image="worker-el9/6", failure_reason="old")),
        )
    )
    dom.create()
    yield c
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    c.close()


def _connect(uri):
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    return connect(uri)  # test:///default is one shared driver in this process; run_module closes its own


def _read(conn, name):
    return sm.from_xml(conn.lookupByName(name).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, sm.NAMESPACE, 0))


def test_the_third_failure_stops_the_vm_keeps_the_domain_and_returns_the_console_tail(conn, tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHVIRT_FARM_NOW", "2026-12-01T11:00:00Z")
    (tmp_path / "hv1-slot-01-console.log").write_text("boot\r\n\r\nslurmd: fatal: cannot reach controller\n")
    params = {
        "uri": "test:///default",
        "name": "hv1-slot-01",
        "state": "failed",
        "reason": "slurm: down",
        "backoff": {"threshold": 3, "base": 600, "max": 86400},
        "shutdown_timeout": 0,
        "console_lines": 15,
    }
    check = health.run_module(_connect, dict(params), check_mode=True, diff_mode=True, log_dir=str(tmp_path))
    assert check["backoff"] and check["changed"] and "diff" in check
    assert _read(conn, "hv1-slot-01").failures == 2 and conn.lookupByName("hv1-slot-01").isActive()
    out = health.run_module(_connect, dict(params), check_mode=False, diff_mode=False, log_dir=str(tmp_path))
    assert out["backoff"] and out["backoff_until"] == "2026-12-01T11:10:00Z", out
    assert out["failures"]["consecutive"] == 3 and out["failures"]["image"] == "worker-el9/7"
    assert out["console_tail"] == ["boot", "slurmd: fatal: cannot reach controller"]
    assert out["end"]["how"] == "destroyed"
    dom = conn.lookupByName("hv1-slot-01")  # still defined, stopped, with its record
    assert not dom.isActive() and _read(conn, "hv1-slot-01").in_backoff(NOW)


def test_slot_health_errors_name_the_option(conn, monkeypatch):
    monkeypatch.delenv("BATCHVIRT_FARM_NOW", raising=False)
    base = {"uri": "test:///default", "state": "failed"}
    with pytest.raises(health.SlotHealthError) as info:
        health.run_module(_connect, dict(base, name="missing"), False, False)
    assert info.value.option == "name"
    with pytest.raises(health.SlotHealthError) as info:
        health.run_module(_connect, dict(base, name="hv1-slot-01", backoff={"threshold": 0}), False, False)
    assert info.value.option == "backoff"
    monkeypatch.setenv("BATCHVIRT_FARM_NOW", "tomorrow")
    with pytest.raises(health.SlotHealthError) as info:
        health.run_module(_connect, dict(base, name="hv1-slot-01"), False, False)
    assert info.value.option == "BATCHVIRT_FARM_NOW"
