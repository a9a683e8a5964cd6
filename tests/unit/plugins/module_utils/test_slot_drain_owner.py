"""Who owns a slot's drain: the metadata fields (schema 2 only when an owner is recorded, old
schema-1 slots still read), the ownership rule (a live rolling update or rebalance holds a slot
until its expiry), and claims on real libvirt domains (the test driver)."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_claim as claim
from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_metadata as sm
from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from tests.unit.plugins.module_utils.slotmeta import NOW, driver_domain_xml, make

UNTIL = NOW + datetime.timedelta(hours=1)


def test_a_drain_records_who_why_when_which_run_and_until():
    meta = make().request_drain("DSA-5999 kernel", NOW, "rolling_update", "tok-1", UNTIL)
    back = sm.from_xml(sm.to_xml(meta))
    assert back == meta
    assert back.to_dict()["drain"] == {
        "requested": True,
        "reason": "DSA-5999 kernel",
        "requested_at": "2026-12-01T11:00:00Z",
        "owner": "rolling_update",
        "operation": "tok-1",
        "until": "2026-12-01T12:00:00Z",
    }
    assert 'schema="2"' in sm.to_xml(meta) and back.to_dict()["schema"] == 2


def test_metadata_without_an_owner_stays_schema_1_and_old_slots_still_read():
    assert 'schema="1"' in sm.to_xml(make())
    # a slot drained by an older collection: <drain requested="true" at=...> without an owner
    old = sm.to_xml(make(drain_requested=True, drain_reason="old", drain_requested_at=NOW))
    assert 'schema="1"' in old and "by=" not in old
    read = sm.from_xml(old)
    assert read.drain_requested and read.drain_owner == "" and read.to_dict()["drain"]["owner"] == "operator"
    assert not read.drain_owned_by_other("other", NOW)  # an operator's drain retires the slot


def test_an_old_reader_refuses_owned_metadata_rather_than_ignore_the_owner():
    owned = sm.to_xml(make().request_drain("x", NOW, "rolling_update", "tok", UNTIL))
    # what a reader of schema 1 does with it (the check every reader has kept since schema 1)
    assert int(owned.split('schema="', 1)[1].split('"', 1)[0]) > sm.BASE_SCHEMA_VERSION


def test_the_slot_module_drain_is_owned_by_the_operator():
    # SlotManager.drain calls request_drain(reason, now): the operator asked
    meta = make().request_drain("hardware check", NOW)
    assert meta.drain_owner == "operator" and sm.from_xml(sm.to_xml(meta)).to_dict()["drain"]["owner"] == "operator"


def test_first_request_time_is_kept_and_clear_removes_everything():
    first = make().request_drain("a", NOW, "rolling_update", "tok", UNTIL)
    again = first.request_drain("b", NOW + datetime.timedelta(hours=1), "rolling_update", "tok", UNTIL)
    assert again.drain_requested_at == NOW and again.drain_reason == "b"
    cleared = again.clear_drain()
    assert cleared == make() and 'schema="1"' in sm.to_xml(cleared)


@pytest.mark.parametrize(
    ("owner", "operation", "until", "asker", "now", "owned"),
    [
        ("rolling_update", "ru", UNTIL, "recycle-run", NOW, True),
        ("rebalance", "rb", UNTIL, "recycle-run", NOW, True),
        ("rolling_update", "ru", UNTIL, "ru", NOW, False),  # its own slot
        ("rolling_update", "ru", UNTIL, "recycle-run", UNTIL, False),  # lapsed: the run crashed
        ("rolling_update", "ru", None, "recycle-run", NOW + datetime.timedelta(days=9), True),
        ("operator", "", None, "recycle-run", NOW, False),
        ("recycle", "rc", UNTIL, "ru", NOW, False),
    ],
)
def test_who_holds_a_slot(owner, operation, until, asker, now, owned):
    meta = make().request_drain("why", NOW, owner, operation, until)
    assert meta.drain_owned_by_other(asker, now) is owned


@pytest.mark.parametrize(
    ("mangle", "field"),
    [
        (lambda x: x.replace('by="rolling_update"', 'by="root"'), "drain.by"),
        (lambda x: x.replace('until="2026-12-01T12:00:00Z"', 'until="soon"'), "drain.until"),
    ],
)
def test_bad_owner_fields_name_the_field(mangle, field):
    xml = mangle(sm.to_xml(make().request_drain("x", NOW, "rolling_update", "tok", UNTIL)))
    with pytest.raises(sm.SlotMetadataError) as err:
        sm.from_xml(xml)
    assert err.value.field_name == field


def test_unknown_owner_refused():
    with pytest.raises(sm.SlotMetadataError, match="drain owner must be one of"):
        make().request_drain("x", NOW, "someone")


# -- claims ---------------------------------------------------------------------------------
def test_claim_leaves_a_slot_owned_by_a_live_rolling_update_alone():
    meta = make().request_drain("patch", NOW, "rolling_update", "ru", UNTIL)
    result = claim.plan_claim(meta, "requested", "recycle", "rc", "recycle: drained", UNTIL, NOW)
    assert not result.claimed and not result.changed and result.meta is None
    assert result.msg == "left alone: owned by rolling_update (operation ru): patch, until 2026-12-01T12:00:00Z"
    # once the rolling update's ownership has lapsed, recycle may take the slot
    later = claim.plan_claim(meta, "requested", "recycle", "rc", "recycle: drained", UNTIL, UNTIL)
    assert later.claimed and later.changed and later.meta.drain_owner == "recycle"


def test_clear_only_by_the_owning_run():
    meta = make().request_drain("patch", NOW, "rolling_update", "ru", UNTIL)
    with pytest.raises(claim.SlotClaimError, match="refusing to clear a drain this operation does not own") as err:
        claim.plan_claim(meta, "cleared", "rolling_update", "other", "", None, NOW)
    assert isinstance(err.value, FarmError) and err.value.option == "operation"
    done = claim.plan_claim(meta, "cleared", "rolling_update", "ru", "", None, NOW)
    assert done.changed and done.meta == make()
    assert not claim.plan_claim(make(), "cleared", "rolling_update", "ru", "", None, NOW).changed


libvirt = pytest.importorskip("libvirt")


@pytest.fixture
def conn():
    from ansible_collections.batchvirt.farm.plugins.module_utils._libvirt import connect

    c = connect("test:///default")
    domains = [
        c.defineXML(driver_domain_xml("hv1-slot-01", sm.to_xml(make()))),
        c.defineXML(driver_domain_xml("foreign", "")),
    ]
    yield c
    for dom in domains:
        dom.undefine()
    c.close()


def _read(conn, name):
    return sm.from_xml(conn.lookupByName(name).metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, sm.NAMESPACE, 0))


def test_claims_on_libvirt_domains(conn):
    until = "2026-12-01T12:00:00Z"
    first = claim.run_claims(conn, ["hv1-slot-01"], "requested", "rolling_update", "ru", "patch", until, NOW)
    assert first[0].claimed and first[0].changed
    stored = _read(conn, "hv1-slot-01")
    assert (stored.drain_owner, stored.drain_operation, stored.drain_reason) == ("rolling_update", "ru", "patch")
    again = claim.run_claims(conn, ["hv1-slot-01"], "requested", "rolling_update", "ru", "patch", until, NOW)
    assert again[0].claimed and not again[0].changed  # idempotent
    other = claim.run_claims(conn, ["hv1-slot-01"], "requested", "recycle", "rc", "recycle", until, NOW)
    assert not other[0].claimed and _read(conn, "hv1-slot-01").drain_owner == "rolling_update"
    check = claim.run_claims(conn, ["hv1-slot-01"], "cleared", "rolling_update", "ru", "", "", NOW, check_mode=True)
    assert check[0].changed and _read(conn, "hv1-slot-01").drain_requested
    claim.run_claims(conn, ["hv1-slot-01"], "cleared", "rolling_update", "ru", "", "", NOW)
    assert _read(conn, "hv1-slot-01") == make()


@pytest.mark.parametrize(
    ("names", "kwargs", "option", "message"),
    [
        (["missing"], {}, "name", "does not exist"),
        (["foreign"], {}, "name", "is not a batchvirt slot"),
        (["hv1-slot-01"], {"owner": "root"}, "owner", "owner must be one of"),
        (["hv1-slot-01"], {"reason": ""}, "reason", "needs a reason"),
        (["hv1-slot-01"], {"until": "later"}, "until", "not an ISO-8601"),
    ],
)
def test_claim_errors_name_the_option(conn, names, kwargs, option, message):
    args = dict({"owner": "rolling_update", "reason": "why", "until": ""}, **kwargs)
    with pytest.raises(claim.SlotClaimError, match=message) as err:
        claim.run_claims(conn, names, "requested", args["owner"], "ru", args["reason"], args["until"], NOW)
    assert err.value.option == option
