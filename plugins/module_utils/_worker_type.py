# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the worker-type declaration (one place that says what a type is).

A *worker type* is one kind of worker VM the farm can run: its image (identifier and version
policy), its size (vCPUs, memory, disk), how the batch system knows it (features, partition),
how long its slots live (lifetime, spread, longest job walltime), and how many slots of it the
farm keeps (minimum, maximum) and what share of a contended farm it gets (weight).

Jobs choose a type by its batch features (Slurm ``sbatch --constraint=<type>``); the type's
name is always one of its features. :func:`parse_worker_types` validates a declaration list
(as a play gives it) and names the field at fault, e.g. ``worker_types[1].max_slots``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError

# A type name is a Slurm feature and an inventory group suffix: letters, digits, '-', '_', '.'.
NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,62}$")
NEWEST = "newest"

_FIELDS = (
    "name",
    "image",
    "image_version",
    "vcpus",
    "memory_mib",
    "disk_gib",
    "features",
    "partition",
    "lifetime",
    "lifetime_spread",
    "max_job_walltime",
    "min_slots",
    "max_slots",
    "weight",
)


class WorkerTypeError(FarmError):
    """A worker-type declaration the farm cannot use; ``option`` names the field."""


@dataclass(frozen=True)
class WorkerType:
    """One declared worker type (see the module docstring)."""

    name: str
    image: str
    image_version: str = NEWEST  # "newest" or one pinned version
    vcpus: int = 1
    memory_mib: int = 2048
    disk_gib: int = 20
    features: Tuple[str, ...] = ()  # always starts with the name
    partition: str = ""
    lifetime: int = 86400
    lifetime_spread: int = 0
    max_job_walltime: int = 0
    min_slots: int = 0
    max_slots: Optional[int] = None  # None: no maximum but the farm's capacity
    weight: float = 1.0

    def cap(self, capacity: int) -> int:
        """The most slots this type may have on a farm of ``capacity`` places."""
        return capacity if self.max_slots is None else min(capacity, self.max_slots)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "image": self.image,
            "image_version": self.image_version,
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "disk_gib": self.disk_gib,
            "features": list(self.features),
            "partition": self.partition,
            "lifetime": self.lifetime,
            "lifetime_spread": self.lifetime_spread,
            "max_job_walltime": self.max_job_walltime,
            "min_slots": self.min_slots,
            "max_slots": self.max_slots,
            "weight": self.weight,
        }


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, minimum: int) -> int:
    value = raw.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, (int, str)) or not str(value).strip().lstrip("-").isdigit():
        raise WorkerTypeError(f"{where}.{key}: {value!r} is not a whole number.", f"{where}.{key}")
    number = int(value)
    if number < minimum:
        raise WorkerTypeError(f"{where}.{key}: must be {minimum} or more, got {number}.", f"{where}.{key}")
    return number


def _text(raw: Mapping[str, Any], key: str, where: str, default: str = "") -> str:
    value = raw.get(key, default)
    if value is None:
        value = default
    if not isinstance(value, str):
        raise WorkerTypeError(f"{where}.{key}: {value!r} is not a string.", f"{where}.{key}")
    return value.strip()


def parse_worker_type(raw: Any, where: str = "worker_types[0]") -> WorkerType:
    """One declaration (a mapping) as a :class:`WorkerType`; ``where`` prefixes the field names."""
    if not isinstance(raw, Mapping):
        raise WorkerTypeError(f"{where}: a worker type is a mapping with name, image, ...; got {raw!r}.", where)
    unknown = sorted(str(k) for k in raw if k not in _FIELDS)
    if unknown:
        raise WorkerTypeError(
            f"{where}: unknown field(s) {', '.join(unknown)}; a worker type has {', '.join(_FIELDS)}.",
            f"{where}.{unknown[0]}",
        )
    name = _text(raw, "name", where)
    if not NAME_PATTERN.match(name):
        raise WorkerTypeError(
            f"{where}.name: {name!r} is not a type name: it is a batch feature, so use a letter then letters, "
            "digits, '-', '_' or '.' (at most 63 characters).",
            f"{where}.name",
        )
    image = _text(raw, "image", where)
    if not image:
        raise WorkerTypeError(f"{where}.image: give the image identifier the type's slots boot from.", f"{where}.image")
    version = _text(raw, "image_version", where, NEWEST) or NEWEST
    features_raw = raw.get("features") or []
    if isinstance(features_raw, str) or not isinstance(features_raw, Sequence):
        raise WorkerTypeError(f"{where}.features: a list of batch features, got {features_raw!r}.", f"{where}.features")
    features: List[str] = [name]
    for i, feature in enumerate(features_raw):
        if not isinstance(feature, str) or not NAME_PATTERN.match(feature.strip()):
            raise WorkerTypeError(
                f"{where}.features[{i}]: {feature!r} is not a batch feature (a letter then letters, digits, '-', '_', '.').",
                f"{where}.features[{i}]",
            )
        if feature.strip() not in features:
            features.append(feature.strip())
    lifetime = _int(raw, "lifetime", where, 86400, 1)
    spread = _int(raw, "lifetime_spread", where, 0, 0)
    if spread >= lifetime:
        raise WorkerTypeError(
            f"{where}.lifetime_spread: must be less than lifetime ({lifetime} s), got {spread}.",
            f"{where}.lifetime_spread",
        )
    min_slots = _int(raw, "min_slots", where, 0, 0)
    max_slots: Optional[int] = None
    if raw.get("max_slots") is not None:
        max_slots = _int(raw, "max_slots", where, 0, 0)
        if max_slots < min_slots:
            raise WorkerTypeError(
                f"{where}.max_slots: {max_slots} is below min_slots ({min_slots}); raise max_slots or lower min_slots.",
                f"{where}.max_slots",
            )
    weight_raw = raw.get("weight", 1.0)
    try:
        weight = float(weight_raw if weight_raw is not None else 1.0)
    except (TypeError, ValueError):
        raise WorkerTypeError(f"{where}.weight: {weight_raw!r} is not a number.", f"{where}.weight") from None
    if isinstance(weight_raw, bool) or not 0 < weight < float("inf"):
        raise WorkerTypeError(f"{where}.weight: must be a number above 0, got {weight_raw!r}.", f"{where}.weight")
    return WorkerType(
        name=name,
        image=image,
        image_version=version,
        vcpus=_int(raw, "vcpus", where, 1, 1),
        memory_mib=_int(raw, "memory_mib", where, 2048, 64),
        disk_gib=_int(raw, "disk_gib", where, 20, 1),
        features=tuple(features),
        partition=_text(raw, "partition", where),
        lifetime=lifetime,
        lifetime_spread=spread,
        max_job_walltime=_int(raw, "max_job_walltime", where, 0, 0),
        min_slots=min_slots,
        max_slots=max_slots,
        weight=weight,
    )


def parse_worker_types(raw: Any, field_name: str = "worker_types") -> List[WorkerType]:
    """A declaration list as :class:`WorkerType` objects (names unique, at least one type)."""
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence) or not raw:
        raise WorkerTypeError(f"{field_name}: give a non-empty list of worker types.", field_name)
    types: List[WorkerType] = []
    seen: Dict[str, int] = {}
    for i, item in enumerate(raw):
        wt = parse_worker_type(item, f"{field_name}[{i}]")
        if wt.name in seen:
            raise WorkerTypeError(
                f"{field_name}[{i}].name: {wt.name!r} is declared twice (also {field_name}[{seen[wt.name]}]).",
                f"{field_name}[{i}].name",
            )
        seen[wt.name] = i
        types.append(wt)
    return types


# -- which type a job asks for ----------------------------------------------------------------
_SPLIT_OR = re.compile(r"[|]")
_SPLIT_AND = re.compile(r"[&,]")
_NOISE = re.compile(r"[\[\]()\s]")
_COUNT = re.compile(r"\*\d+$")


def constraint_alternatives(constraint: str) -> List[Tuple[str, ...]]:
    """A Slurm constraint (``a``, ``a&ssd``, ``a|b``, ``[a|b]``, ``a*2``) as alternatives of AND-sets.

    ``""`` gives ``[]`` (no constraint). Counts (``*2``) and brackets are ignored: a job is
    demand for a type when every feature of one alternative is a feature of that type.
    """
    text = _NOISE.sub("", constraint or "")
    if not text:
        return []
    out: List[Tuple[str, ...]] = []
    for alternative in _SPLIT_OR.split(text):
        names = tuple(dict.fromkeys(_COUNT.sub("", part) for part in _SPLIT_AND.split(alternative) if part))
        if names and names not in out:
            out.append(names)
    return out


def match_type(types: Sequence[WorkerType], constraint: str, partition: str = "") -> Optional[WorkerType]:
    """The first declared type a job with ``constraint`` (and ``partition``) can run on, or None.

    A type with a partition serves only jobs that name that partition (a job may name several,
    comma-separated, as Slurm allows); a type without one serves any partition.
    """
    alternatives = constraint_alternatives(constraint)
    if not alternatives:
        return None
    partitions = {p.strip() for p in (partition or "").split(",") if p.strip()}
    for wt in types:
        if wt.partition and partitions and wt.partition not in partitions:
            continue
        features = set(wt.features)
        if any(set(alt) <= features for alt in alternatives):
            return wt
    return None
