"""Worker-type declarations: defaults, validation naming the field, and which type a job asks for."""

from __future__ import annotations

import re

import pytest

from ansible_collections.batchvirt.farm.plugins.module_utils._worker_type import (
    WorkerType,
    WorkerTypeError,
    constraint_alternatives,
    match_type,
    parse_worker_types,
)

GOOD = [
    {"name": "el9", "image": "worker-el9", "vcpus": 2, "memory_mib": 4096, "min_slots": 2, "max_slots": 40},
    {"name": "el8", "image": "worker-el8", "image_version": "2026.11.21", "features": ["legacy"], "weight": 0.5},
    {"name": "gpu", "image": "worker-gpu", "partition": "gpu", "lifetime": 7200, "lifetime_spread": 600},
]


def test_declaration_with_defaults():
    el9, el8, gpu = parse_worker_types(GOOD)
    assert el9 == WorkerType(
        name="el9", image="worker-el9", vcpus=2, memory_mib=4096, features=("el9",), min_slots=2, max_slots=40
    )
    assert (el8.image_version, el8.features, el8.weight, el8.max_slots) == ("2026.11.21", ("el8", "legacy"), 0.5, None)
    assert el9.image_version == "newest" and gpu.partition == "gpu"
    assert el9.to_dict()["features"] == ["el9"]


@pytest.mark.parametrize(
    ("index", "change", "option", "message"),
    [
        (1, {"max_slots": -1}, "worker_types[1].max_slots", "must be 0 or more"),
        (0, {"max_slots": 1}, "worker_types[0].max_slots", "1 is below min_slots (2)"),
        (1, {"name": "el 8"}, "worker_types[1].name", "is not a type name"),
        (1, {"name": "el9"}, "worker_types[1].name", "declared twice (also worker_types[0])"),
        (2, {"image": ""}, "worker_types[2].image", "give the image identifier"),
        (2, {"lifetime_spread": 7200}, "worker_types[2].lifetime_spread", "less than lifetime (7200 s)"),
        (0, {"vcpus": "two"}, "worker_types[0].vcpus", "is not a whole number"),
        (0, {"vcpus": True}, "worker_types[0].vcpus", "is not a whole number"),
        (1, {"weight": 0}, "worker_types[1].weight", "above 0"),
        (1, {"weight": "nan"}, "worker_types[1].weight", "above 0"),
        (1, {"weight": "heavy"}, "worker_types[1].weight", "is not a number"),
        (1, {"features": "legacy"}, "worker_types[1].features", "a list of batch features"),
        (1, {"features": ["ok", "no way"]}, "worker_types[1].features[1]", "is not a batch feature"),
        (0, {"colour": "red"}, "worker_types[0].colour", "unknown field(s) colour"),
    ],
)
def test_bad_declarations_name_the_field(index, change, option, message):  # type: ignore[no-untyped-def]
    raw = [dict(item) for item in GOOD]
    raw[index].update(change)
    with pytest.raises(WorkerTypeError, match=re.escape(message)) as info:
        parse_worker_types(raw)
    assert info.value.option == option


@pytest.mark.parametrize("raw", [None, [], "el9", {"name": "el9"}])
def test_the_list_itself_must_be_a_non_empty_list(raw):  # type: ignore[no-untyped-def]
    with pytest.raises(WorkerTypeError, match="non-empty list of worker types"):
        parse_worker_types(raw)


def test_an_item_must_be_a_mapping():
    with pytest.raises(WorkerTypeError, match=r"worker_types\[0\]: a worker type is a mapping"):
        parse_worker_types(["el9"])


@pytest.mark.parametrize(
    ("constraint", "alternatives"),
    [
        ("", []),
        ("el9", [("el9",)]),
        ("el9&ssd", [("el9", "ssd")]),
        ("el9,ssd", [("el9", "ssd")]),
        ("el8|el9", [("el8",), ("el9",)]),
        ("[el8|el9]", [("el8",), ("el9",)]),
        ("el9*2", [("el9",)]),
        ("(el9&legacy)|gpu", [("el9", "legacy"), ("gpu",)]),
    ],
)
def test_constraint_alternatives(constraint, alternatives):  # type: ignore[no-untyped-def]
    assert constraint_alternatives(constraint) == alternatives


@pytest.mark.parametrize(
    ("constraint", "partition", "expected"),
    [
        ("el9", "", "el9"),
        ("legacy", "", "el8"),
        ("el8&legacy", "batch", "el8"),
        ("el9&legacy", "", None),  # no one type has both
        ("el7|el8", "", "el8"),
        ("gpu", "gpu", "gpu"),
        ("gpu", "batch", None),  # the gpu type serves its partition only
        ("gpu", "batch,gpu", "gpu"),
        ("", "", None),
    ],
)
def test_match_type(constraint, partition, expected):  # type: ignore[no-untyped-def]
    types = parse_worker_types(GOOD)
    found = match_type(types, constraint, partition)
    assert (found.name if found else None) == expected
