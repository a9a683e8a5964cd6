"""HEPiX Machine/Job Features: the files a worker VM gets and the cloud-init entries that write
them (the seed of a real worker slot is checked in tests/integration/farm)."""

from __future__ import annotations

import datetime
import json

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils import _seed
from ansible_collections.batchvirt.farm.plugins.module_utils._mjf import (
    MachineFeaturesError,
    cloud_init_machine_features,
    machine_features,
)

DEADLINE = datetime.datetime(2026, 11, 24, 6, 0, 0, tzinfo=datetime.timezone.utc)


def test_files_without_hs06():
    files = machine_features(DEADLINE, 4)
    assert files == {
        "shutdowntime": "1795500000",
        "jobslots": "4",
        "total_cpu": "4",
        "log_cores": "4",
        "phys_cores": "4",
        "grace_secs": "60",
    }
    assert int(files["shutdowntime"]) == int(DEADLINE.timestamp())


def test_hs06_and_jobslots_when_configured():
    files = machine_features(DEADLINE, 8, grace_secs=120, hs06=95.5, jobslots=2)
    assert files["hs06"] == "95.5" and files["jobslots"] == "2" and files["grace_secs"] == "120"
    assert machine_features(DEADLINE, 1, hs06=10.0)["hs06"] == "10"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hs06": 0.0}, "machine_features.hs06 must be positive"),
        ({"grace_secs": -1}, "machine_features.grace_secs must be zero or more"),
        ({"vcpus": 0}, "vcpus must be at least 1"),
    ],
)
def test_bad_options(kwargs, message):
    args = {"shutdowntime": DEADLINE, "vcpus": 2}
    args.update(kwargs)
    with pytest.raises(MachineFeaturesError, match=message):
        machine_features(**args)


def test_naive_deadline_refused():
    with pytest.raises(MachineFeaturesError, match="timezone-aware"):
        machine_features(DEADLINE.replace(tzinfo=None), 2)


@pytest.mark.parametrize("path", ["relative/mf", "/etc/mf; rm -rf /", "/etc/$(id)", "/etc/m f", "/etc/mf\n"])
def test_hostile_path_refused(path):
    with pytest.raises(MachineFeaturesError, match="machine_features.path"):
        cloud_init_machine_features({"shutdowntime": "1"}, path)


def test_cloud_init_entries_merge_with_registration():
    published = cloud_init_machine_features(machine_features(DEADLINE, 2), "/etc/machinefeatures/")
    registration = {"write_files": [{"path": "/etc/munge/munge.key", "content": "x"}], "runcmd": [["true"]]}
    text = _seed.user_data(None, None, _seed.merge_user_data(registration, published), hostname="hv1-slot-01")
    doc = json.loads(text.split("\n", 1)[1])
    by_path = {f["path"]: f for f in doc["write_files"]}
    assert by_path["/etc/munge/munge.key"]["content"] == "x"
    assert by_path["/etc/machinefeatures/shutdowntime"]["content"] == "1795500000\n"
    assert "/etc/machinefeatures/hs06" not in by_path
    assert by_path["/etc/environment"] == {
        "path": "/etc/environment",
        "content": "MACHINEFEATURES=/etc/machinefeatures\n",
        "append": True,
    }
    assert "export MACHINEFEATURES=/etc/machinefeatures" in by_path["/etc/profile.d/machinefeatures.sh"]["content"]
    assert doc["runcmd"] == [["true"]]


def _plan(machine_features):
    from types import SimpleNamespace

    return SimpleNamespace(
        name="hv1-slot-01",
        batch=SimpleNamespace(controller=""),
        seed=SimpleNamespace(
            cloud_init=None, ssh_authorized_keys=(), gateway="", dns=(), machine_features=machine_features
        ),
        spec=SimpleNamespace(vcpus=3),
    )


def _meta():
    from types import SimpleNamespace

    created = DEADLINE - datetime.timedelta(days=3)
    return SimpleNamespace(
        deadline=DEADLINE, created_at=created, mac="52:54:00:00:00:01", address="", network_mode="user"
    )


def test_seed_of_a_worker_slot_carries_the_features():
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_create import seed_files

    doc = json.loads(seed_files(_plan({"hs06": 40.0}), _meta())["user-data"].split("\n", 1)[1])
    by_path = {f["path"]: f["content"] for f in doc["write_files"]}
    assert by_path["/etc/machinefeatures/shutdowntime"] == "1795500000\n"
    assert by_path["/etc/machinefeatures/total_cpu"] == "3\n"
    assert by_path["/etc/machinefeatures/hs06"] == "40\n"


def test_seed_without_features_and_bad_option_named():
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_create import seed_files
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_host import SlotError

    assert "machinefeatures" not in seed_files(_plan(None), _meta())["user-data"]  # golden node, or enabled: false
    with pytest.raises(SlotError, match="machine_features.hs06 must be positive") as exc:
        seed_files(_plan({"hs06": -1.0}), _meta())
    assert exc.value.option == "machine_features.hs06"


@pytest.mark.parametrize(
    ("req", "published"),
    [
        ({"purpose": "worker"}, True),
        ({}, True),
        ({"purpose": "golden"}, False),
        ({"machine_features": {"enabled": False}}, False),
    ],
)
def test_which_slots_publish(req, published):
    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_plan import _machine_features

    assert (_machine_features(req) is not None) is published
