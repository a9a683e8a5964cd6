"""Slot metadata: round trip, tolerance of unknown elements, errors that name the field."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _slot_metadata as sm

T0 = datetime.datetime(2026, 11, 1, 6, 0, 0, tzinfo=datetime.timezone.utc)


def make(**overrides):
    values = {
        "name": "hv1-slot-01",
        "hypervisor": "hv1",
        "image_identifier": "worker-el9",
        "image_version": "20261101.1",
        "image_sha512": "ab" * 64,
        "created_at": T0,
        "drain_at": T0 + datetime.timedelta(days=1),
        "deadline": T0 + datetime.timedelta(days=3),
        "worker_type": "el9",
        "network_mode": "user",
        "ssh_host": "127.0.0.1",
        "ssh_port": 10022,
        "ssh_user": "root",
    }
    values.update(overrides)
    return sm.SlotMetadata(**values)


def test_round_trip_keeps_every_field():
    meta = make(
        drain_requested=True,
        drain_reason="kernel CVE-2026-1234 <urgent> & co",
        drain_requested_at=T0 + datetime.timedelta(hours=2),
        address="192.0.2.10",
        mac="52:54:00:12:34:56",
        batch_node="vm-01",
        extra={"site": "GridKa"},
    )
    assert sm.from_xml(sm.to_xml(meta)) == meta


def test_xml_uses_the_versioned_namespace():
    xml = sm.to_xml(make())
    assert f'xmlns:farm="{sm.NAMESPACE}"' in xml
    assert 'schema="1"' in xml


def test_unknown_elements_are_ignored():
    xml = sm.to_xml(make()).replace("</farm:slot>", "<farm:future attr='x'>later</farm:future></farm:slot>")
    assert sm.from_xml(xml).name == "hv1-slot-01"


def test_newer_schema_is_refused_with_advice():
    xml = sm.to_xml(make()).replace('schema="1"', 'schema="7"')
    with pytest.raises(sm.SlotMetadataError, match="upgrade batchvirt.farm") as err:
        sm.from_xml(xml)
    assert err.value.field_name == "schema"


@pytest.mark.parametrize(
    ("mangle", "field", "message"),
    [
        (lambda x: x.replace("<farm:created_at>2026-11-01T06:00:00Z</farm:created_at>", ""), "created_at", "missing"),
        (lambda x: x.replace("2026-11-02T06:00:00Z", "tomorrow"), "drain_at", "not an ISO-8601"),
        (lambda x: x.replace('port="10022"', 'port="ssh"'), "ssh.port", "not a number"),
        (lambda x: x.replace('identifier="worker-el9"', ""), "image_identifier", "required"),
        (lambda x: x[:40], "metadata", "not well-formed"),
        (lambda x: x.replace(sm.NAMESPACE, "http://example.org/other"), "metadata", "expected <slot"),
    ],
)
def test_broken_metadata_names_the_field(mangle, field, message):
    with pytest.raises(sm.SlotMetadataError, match=message) as err:
        sm.from_xml(mangle(sm.to_xml(make())))
    assert err.value.field_name == field


def test_deadline_before_drain_is_refused():
    with pytest.raises(sm.SlotMetadataError, match="deadline must not be before drain_at"):
        make(deadline=T0 + datetime.timedelta(hours=1))


def test_plan_lifetime_spread_is_stable_and_bounded():
    a1 = sm.plan_lifetime("hv1-slot-01", T0, lifetime=86400, walltime=172800, spread=3600)
    a2 = sm.plan_lifetime("hv1-slot-01", T0, lifetime=86400, walltime=172800, spread=3600)
    b = sm.plan_lifetime("hv1-slot-02", T0, lifetime=86400, walltime=172800, spread=3600)
    assert a1 == a2
    assert a1 != b
    for drain_at, deadline in (a1, b):
        assert T0 + datetime.timedelta(seconds=86400 - 3600) <= drain_at <= T0 + datetime.timedelta(seconds=86400)
        assert deadline - drain_at == datetime.timedelta(seconds=172800)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"lifetime": 0, "walltime": 10}, "lifetime"),
        ({"lifetime": -5, "walltime": 10}, "lifetime"),
        ({"lifetime": 100, "walltime": -1}, "max_job_walltime"),
        ({"lifetime": 100, "walltime": 10, "spread": 100}, "lifetime_spread"),
    ],
)
def test_plan_lifetime_refuses_bad_input(kwargs, field):
    with pytest.raises(sm.SlotMetadataError) as err:
        sm.plan_lifetime("s", T0, **kwargs)
    assert err.value.field_name == field


def test_request_drain_keeps_first_request_time():
    later = T0 + datetime.timedelta(hours=5)
    once = make().request_drain("security update", T0 + datetime.timedelta(hours=1))
    twice = once.request_drain("another reason", later)
    assert twice.drain_requested_at == T0 + datetime.timedelta(hours=1)
    assert twice.drain_reason == "another reason"


def test_parse_time_accepts_offsets_and_naive_values():
    assert sm.parse_time("2026-11-01T07:00:00+01:00") == T0
    assert sm.parse_time("2026-11-01T06:00:00") == T0
    assert sm.format_time(T0) == "2026-11-01T06:00:00Z"


def test_libvirt_form_without_namespace_round_trips():
    """setMetadata() wants the element without a namespace; metadata() returns it without one."""
    meta = make(drain_requested=True, drain_reason="r", drain_requested_at=T0, extra={"purpose": "golden"})
    plain = sm.to_xml(meta, namespaced=False)
    assert "xmlns" not in plain and plain.startswith("<slot ")
    assert sm.from_xml(plain) == meta
