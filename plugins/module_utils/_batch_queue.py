# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the batch system's pending queue, read with ONE bulk command.

:func:`read_pending` asks an adapter (:mod:`._batch`) for every pending job with the worker
type it asks for (its constraint), its partition, its cores and its submit time:

* Slurm: one ``squeue -h -r -t PENDING -o '%i<TAB>%P<TAB>%C<TAB>%V<TAB>%r<TAB>%f'`` (array
  elements one per line; ``%V`` is the submit time in the controller host's local time);
* HTCondor: one ``condor_q -allusers -json -constraint 'JobStatus == 1'`` with the attributes
  below. A job asks for a type with ``+FarmWorkerType = "<type>"`` in its submit file, or with
  ``stringListMember("<type>", FARM_FEATURES)`` in its requirements (the feature list each
  worker's startd advertises).

Jobs that could not start even on a matching worker (held, waiting for a dependency or a begin
time) are kept with ``eligible=False``; the demand plan does not count them.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import parse_time

# Tab-separated, the constraint last: a constraint may hold '|' (``typeA|typeB``).
SQUEUE_PENDING_ARGS = ("-h", "-r", "-t", "PENDING", "-o", "%i\t%P\t%C\t%V\t%r\t%f")
CONDOR_Q_ATTRIBUTES = (
    "ClusterId",
    "ProcId",
    "JobStatus",
    "RequestCpus",
    "QDate",
    "FarmWorkerType",
    "Requirements",
    "AcctGroup",
)
CONDOR_Q_ARGS = ("-allusers", "-json", "-constraint", "JobStatus == 1", "-attributes", ",".join(CONDOR_Q_ATTRIBUTES))

# Slurm pending reasons of jobs a new worker would not start (held, dependency, begin time).
NOT_ELIGIBLE_REASONS = (
    "JobHeldUser",
    "JobHeldAdmin",
    "Dependency",
    "DependencyNeverSatisfied",
    "BeginTime",
    "PartitionDown",
    "PartitionInactive",
)


class QueueError(FarmError):
    """The pending queue could not be read or understood."""


@dataclass(frozen=True)
class PendingJob:
    """One pending job as the demand plan sees it."""

    job_id: str
    constraint: str = ""  # Slurm --constraint, or the type named by an HTCondor job
    partition: str = ""
    cores: int = 1
    submitted_at: Optional[datetime.datetime] = None  # UTC
    eligible: bool = True
    reason: str = ""

    def age(self, now: datetime.datetime) -> float:
        """Seconds since submission (0 when unknown)."""
        if self.submitted_at is None:
            return 0.0
        return max(0.0, (now - self.submitted_at).total_seconds())

    def to_dict(self) -> Dict[str, Any]:
        return {
            "job_id": self.job_id,
            "constraint": self.constraint,
            "partition": self.partition,
            "cores": self.cores,
            "submitted_at": self.submitted_at.strftime("%Y-%m-%dT%H:%M:%SZ") if self.submitted_at else "",
            "eligible": self.eligible,
            "reason": self.reason,
        }


def _local_time(text: str, tz: Optional[datetime.tzinfo]) -> Optional[datetime.datetime]:
    """Slurm's ``%V`` (local time without zone) as UTC; None for ``N/A`` or ``Unknown``."""
    try:
        naive = datetime.datetime.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    local = naive.replace(tzinfo=tz) if tz is not None else naive.astimezone()
    return local.astimezone(datetime.timezone.utc)


def parse_squeue_pending(text: str, tz: Optional[datetime.tzinfo] = None) -> List[PendingJob]:
    """Pending jobs from ``squeue`` with :data:`SQUEUE_PENDING_ARGS`.

    ``tz`` is the controller host's zone (``None``: this host's local zone, which is right when
    the command ran here). ``%f`` prints ``(null)`` for a job without a constraint.
    """
    jobs: List[PendingJob] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 5)
        if len(parts) != 6:
            raise QueueError(
                f"squeue line {number} has {len(parts)} tab-separated fields, expected 6 "
                f"(job id, partition, cores, submit time, reason, constraint): {line!r}"
            )
        job_id, partition, cores, submitted, reason, features = (p.strip() for p in parts)
        if features in ("(null)", "N/A"):
            features = ""
        try:
            ncores = max(1, int(cores))
        except ValueError:
            raise QueueError(f"squeue line {number}: cores {cores!r} is not a number: {line!r}") from None
        jobs.append(
            PendingJob(
                job_id=job_id,
                constraint=features,
                partition=partition,
                cores=ncores,
                submitted_at=_local_time(submitted, tz),
                eligible=reason.split(",")[0] not in NOT_ELIGIBLE_REASONS,
                reason=reason,
            )
        )
    return jobs


_REQ_FEATURE = re.compile(r"stringListMember\(\s*\"([^\"]+)\"\s*,\s*(?:TARGET\.|target\.)?FARM_FEATURES", re.IGNORECASE)


def parse_condor_q_json(text: str) -> List[PendingJob]:
    """Idle jobs from ``condor_q`` with :data:`CONDOR_Q_ARGS` (``-json``: a list of job ads)."""
    text = text.strip()
    try:
        ads = json.loads(text) if text else []
    except ValueError as exc:
        raise QueueError(f"htcondor: condor_q -json printed no valid JSON ({exc}).") from exc
    if not isinstance(ads, list):
        raise QueueError("htcondor: condor_q -json did not print a list of job ads.")
    jobs: List[PendingJob] = []
    for ad in ads:
        if not isinstance(ad, dict) or ad.get("JobStatus", 1) != 1:
            continue
        wanted = str(ad.get("FarmWorkerType") or "").strip()
        if not wanted:
            wanted = "&".join(dict.fromkeys(_REQ_FEATURE.findall(str(ad.get("Requirements") or ""))))
        qdate = ad.get("QDate")
        submitted = (
            datetime.datetime.fromtimestamp(int(qdate), datetime.timezone.utc)
            if isinstance(qdate, (int, float))
            else None
        )
        cpus = ad.get("RequestCpus")
        jobs.append(
            PendingJob(
                job_id=f"{ad.get('ClusterId', '?')}.{ad.get('ProcId', 0)}",
                constraint=wanted,
                partition=str(ad.get("AcctGroup") or ""),
                cores=max(1, int(cpus)) if isinstance(cpus, (int, float)) and not isinstance(cpus, bool) else 1,
                submitted_at=submitted,
            )
        )
    return jobs


def read_pending(adapter: Any) -> List[PendingJob]:
    """Every pending job of the adapter's batch system, from ONE command (see the module docstring)."""
    reader = getattr(adapter, "pending_jobs_output", None)
    if reader is None:
        raise QueueError(f"{getattr(adapter, 'system', '?')}: this batch adapter cannot read the pending queue.")
    text = reader()
    if adapter.system == "htcondor":
        return parse_condor_q_json(text)
    return parse_squeue_pending(text)


def jobs_from_data(raw: Any, field_name: str = "queue") -> List[PendingJob]:
    """Pending jobs given as data (a module option): each a mapping with job_id, constraint, ..."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise QueueError(
            f"{field_name}: a list of pending jobs (job_id, constraint, partition, cores, submitted_at).", field_name
        )
    jobs: List[PendingJob] = []
    for i, item in enumerate(raw):
        where = f"{field_name}[{i}]"
        if not isinstance(item, dict):
            raise QueueError(f"{where}: a pending job is a mapping, got {item!r}.", where)
        cores = item.get("cores", 1)
        if isinstance(cores, bool) or not isinstance(cores, int) or cores < 1:
            raise QueueError(f"{where}.cores: a whole number of cores, 1 or more; got {cores!r}.", f"{where}.cores")
        submitted = item.get("submitted_at")
        jobs.append(
            PendingJob(
                job_id=str(item.get("job_id", i)),
                constraint=str(item.get("constraint") or ""),
                partition=str(item.get("partition") or ""),
                cores=cores,
                submitted_at=parse_time(submitted, f"{where}.submitted_at", QueueError) if submitted else None,
                eligible=bool(item.get("eligible", True)),
            )
        )
    return jobs
