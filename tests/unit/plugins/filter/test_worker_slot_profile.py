"""The batchvirt.farm.worker_slot_profile filter: a slot is re-created as its own worker type
(size, lifetime, image, batch features), so a mixed farm stays mixed through recycling and
rolling updates; a slot without a type keeps the farm-wide profile."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.batchvirt.farm.plugins.filter.worker_types import worker_slot_profile

PROFILE = {
    "uri": "qemu:///system",
    "vcpus": 1,
    "memory_mib": 2048,
    "disk_size_gib": None,
    "lifetime": 604800,
    "lifetime_spread": 3600,
    "max_job_walltime": 172800,
    "pool": "batchvirt-slots",
}
TYPES = [
    {"name": "el9", "image": "worker-el9", "vcpus": 4, "memory_mib": 8192, "disk_gib": 40, "lifetime": 86400},
    {
        "name": "gpu",
        "image": "worker-gpu",
        "image_version": "2026.11.30",
        "vcpus": 8,
        "memory_mib": 16384,
        "features": ["cuda"],
        "lifetime": 3600,
        "lifetime_spread": 600,
        "max_job_walltime": 7200,
    },
]
BATCH = {"system": "slurm", "controller": "ctl", "features": ["site", "el9"]}


def test_a_slot_is_recreated_with_its_own_types_size_image_and_features():
    out = worker_slot_profile(PROFILE, TYPES, "gpu", {"identifier": "worker-el9", "version": "3"}, BATCH, "latest")
    assert (out["vcpus"], out["memory_mib"], out["lifetime"], out["lifetime_spread"]) == (8, 16384, 3600, 600)
    assert out["max_job_walltime"] == 7200
    assert out["image_identifier"] == "worker-gpu"
    assert out["image_version"] == "2026.11.30"  # the type pins its version: 'latest' does not move it
    # the type's features, the site's own ones kept, another type's name dropped
    assert out["batch"]["features"] == ["gpu", "cuda", "site"]
    assert out["batch"]["controller"] == "ctl"
    assert out["pool"] == "batchvirt-slots" and out["worker_type"] == "gpu"
    assert BATCH["features"] == ["site", "el9"], "the farm-wide batch options are not changed in place"


def test_a_type_on_newest_takes_the_asked_version_and_keeps_the_farm_walltime():
    out = worker_slot_profile(PROFILE, TYPES, "el9", {"identifier": "worker-el9"}, BATCH, "latest")
    assert (out["vcpus"], out["memory_mib"], out["disk_size_gib"]) == (4, 8192, 40)
    assert out["image_version"] == "latest"
    assert out["max_job_walltime"] == 172800  # the type sets none
    assert out["batch"]["features"] == ["el9", "site"]


@pytest.mark.parametrize(("types", "worker_type"), [([], "gpu"), (TYPES, ""), (TYPES, None), (None, "el9")])
def test_without_a_type_or_declarations_the_farm_profile_and_own_image_stay(types, worker_type):
    out = worker_slot_profile(PROFILE, types, worker_type, {"identifier": "worker-old", "version": "7"}, BATCH, "7")
    assert {k: out[k] for k in PROFILE} == PROFILE
    assert (out["image_identifier"], out["image_version"]) == ("worker-old", "7")
    assert out["batch"] == BATCH


def test_a_slot_whose_type_is_no_longer_declared_is_refused_naming_it():
    with pytest.raises(AnsibleFilterError, match=r"worker type 'arm' is not declared \(declared: el9, gpu\)"):
        worker_slot_profile(PROFILE, TYPES, "arm", {"identifier": "x"}, BATCH)


def test_a_bad_declaration_names_the_field():
    bad = [dict(TYPES[0], vcpus="many")]
    with pytest.raises(AnsibleFilterError, match=r"farm_worker_types\[0\]\.vcpus"):
        worker_slot_profile(PROFILE, bad, "el9", {"identifier": "x"}, BATCH)


def test_a_hypervisors_mix_gets_each_types_size_image_and_features():
    from ansible_collections.batchvirt.farm.plugins.filter.worker_types import worker_layout_mix

    mix = worker_layout_mix([{"worker_type": "gpu", "count": 1}, {"worker_type": "el9"}], TYPES)
    assert mix == [
        {
            "worker_type": "gpu",
            "count": "1",
            "vcpus": 8,
            "memory_mib": 16384,
            "disk_size_gib": 20,
            "image": {"identifier": "worker-gpu", "version": "2026.11.30"},
            "features": ["gpu", "cuda"],
        },
        {
            "worker_type": "el9",
            "count": "auto",
            "vcpus": 4,
            "memory_mib": 8192,
            "disk_size_gib": 40,
            "image": {"identifier": "worker-el9", "version": "latest"},
            "features": ["el9"],
        },
    ]
    assert worker_layout_mix([], TYPES) == []
    with pytest.raises(AnsibleFilterError, match=r"farm_vm_slots_mix\[1\]\.worker_type: 'arm' is not declared"):
        worker_layout_mix([{"worker_type": "el9"}, {"worker_type": "arm"}], TYPES)
