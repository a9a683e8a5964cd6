# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: accounting, one record per VM life, kept on the hypervisor.

A *life* is one VM from its creation to its end: a slot re-created under the same name is a
new life. Its key is ``<hypervisor>/<slot>/<created>`` (``created`` from the slot metadata),
so writing the same life twice (a play re-run after an interruption) updates the one row
and never adds a second; the database is SQLite with a WAL journal and ``synchronous=FULL``,
every write is one transaction, so a writer killed mid-way leaves every committed record
and no half one.

Merging: a later write of a life keeps the fields it does not give; a field it gives
replaces the stored one, except ``created`` (the key) and ``registered`` and ``drain_started``,
which keep the earlier time (the first registration is when the VM started to serve). A write that changes nothing is not
a change (``changed`` false), which keeps the recording task idempotent.

Exports: JSON lines (every field) and an APEL-style CSV (the cloud usage record's column
names: ``VMUUID``, ``SiteName``, ``MachineName``, ``Status``, ``StartTime``, ``EndTime``,
``WallDuration``, ``CpuCount``, ``Memory``, ``ImageId``, ...).
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import io
import json
import os
import re
import sqlite3
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time

DEFAULT_PATH = "/var/lib/batchvirt/accounting.sqlite"
SCHEMA_VERSION = 1
DEFAULT_WORKER_TYPE = "default"
END_REASONS = ("recycled", "rolling_update", "expired", "failed", "removed", "lost")
FAILURE_END_REASONS = frozenset(("failed", "lost"))

# name -> (SQL type, kind) ; kind: str, int, time
FIELDS: Tuple[Tuple[str, str, str], ...] = (
    ("slot", "TEXT NOT NULL", "str"),
    ("hypervisor", "TEXT NOT NULL", "str"),
    ("worker_type", "TEXT NOT NULL DEFAULT 'default'", "str"),
    ("image_identifier", "TEXT NOT NULL DEFAULT ''", "str"),
    ("image_version", "TEXT NOT NULL DEFAULT ''", "str"),
    ("image_sha512", "TEXT NOT NULL DEFAULT ''", "str"),
    ("cores", "INTEGER", "int"),
    ("memory_mib", "INTEGER", "int"),
    ("created", "TEXT NOT NULL", "time"),
    ("registered", "TEXT", "time"),
    ("drain_started", "TEXT", "time"),
    ("ended", "TEXT", "time"),
    ("end_reason", "TEXT", "str"),
    ("jobs", "INTEGER", "int"),
    ("batch_system", "TEXT NOT NULL DEFAULT ''", "str"),
    ("batch_node", "TEXT NOT NULL DEFAULT ''", "str"),
)
FIELD_NAMES = tuple(f[0] for f in FIELDS)
# fields whose first value is the truth: a later write keeps the earlier time
KEEP_EARLIEST = ("registered", "drain_started")
_KIND = {name: kind for name, _sql, kind in FIELDS}
_REQUIRED = ("slot", "hypervisor", "created")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,254}$")
_SHA512_RE = re.compile(r"^([0-9a-f]{128})?$")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lives (life_id TEXT PRIMARY KEY, "
    + ", ".join(f"{name} {sql}" for name, sql, _kind in FIELDS)
    + ", recorded_at TEXT NOT NULL, updated_at TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS lives_created ON lives (created)",
    "CREATE INDEX IF NOT EXISTS lives_ended ON lives (ended)",
)

APEL_COLUMNS = (
    "VMUUID",
    "SiteName",
    "CloudComputeService",
    "MachineName",
    "LocalUserId",
    "LocalGroupId",
    "Status",
    "StartTime",
    "EndTime",
    "WallDuration",
    "CpuDuration",
    "CpuCount",
    "Memory",
    "ImageId",
    "CloudType",
    "BenchmarkType",
    "Benchmark",
    "Jobs",
    "EndReason",
)


class AccountingError(FarmError):
    """A record or query the accounting store refuses; ``option`` names the field."""


def life_id(hypervisor: str, slot: str, created: str) -> str:
    return f"{hypervisor}/{slot}/{created}"


def normalise(record: Dict[str, Any], partial: bool = False) -> Dict[str, Any]:
    """Validate a record's fields; times become the collection's UTC format. Unknown keys are refused."""
    unknown = sorted(set(record) - set(FIELD_NAMES) - {"life_id"})
    if unknown:
        raise AccountingError(
            f"record: unknown field(s) {', '.join(unknown)}; known: {', '.join(FIELD_NAMES)}", "record"
        )
    out: Dict[str, Any] = {}
    for name, value in record.items():
        if name == "life_id" or value is None or value == "":
            continue
        kind = _KIND[name]
        if kind == "time":
            if isinstance(value, datetime.datetime):
                out[name] = format_time(value)
            elif isinstance(value, str):
                out[name] = format_time(parse_time(value, name, AccountingError))
            else:
                _bad(name, value, "a UTC ISO-8601 time")
        elif kind == "int":
            number = _whole(value)
            if number is None:
                _bad(name, value, "a whole number of 0 or more")
            out[name] = number
        else:
            if not isinstance(value, str):
                _bad(name, value, "a string")
            out[name] = value
    for name in ("slot", "hypervisor", "worker_type", "image_identifier", "image_version", "batch_node"):
        if name in out and not _NAME_RE.match(out[name]):
            _bad(name, out[name], "a name of letters, digits and . _ : @ + - (at most 255 characters)")
    if "image_sha512" in out:
        out["image_sha512"] = out["image_sha512"].lower()
        if not _SHA512_RE.match(out["image_sha512"]):
            _bad("image_sha512", out["image_sha512"], "128 hexadecimal digits")
    if "end_reason" in out and out["end_reason"] not in END_REASONS:
        _bad("end_reason", out["end_reason"], "one of " + ", ".join(END_REASONS))
    if not partial:
        for name in _REQUIRED:
            if name not in out:
                raise AccountingError(f"record: {name} is required", name)
    times = [out.get(n) for n in ("created", "registered", "drain_started", "ended")]
    if out.get("created"):
        for name, value in zip(("registered", "drain_started", "ended"), times[1:]):
            if value and value < out["created"]:
                raise AccountingError(f"record: {name} {value} is before created {out['created']}", name)
    if out.get("ended") and not out.get("end_reason") and not partial:
        out["end_reason"] = "removed"
    return out


def _whole(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    if number < 0 or (isinstance(value, float) and value != number):
        return None
    return number


def _bad(name: str, value: Any, what: str) -> Any:
    raise AccountingError(f"record: {name} {value!r} must be {what}", name)


def record_from_metadata(
    slot: Dict[str, Any],
    cores: Optional[int] = None,
    memory_mib: Optional[int] = None,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """A life's record from slot metadata (``SlotMetadata.to_dict()``) and the domain's size.

    ``drain_started`` is the operator's drain request or, once passed, the planned ``drain_at``.
    """
    record: Dict[str, Any] = {
        "slot": slot["name"],
        "hypervisor": slot["hypervisor"],
        "worker_type": slot.get("worker_type") or DEFAULT_WORKER_TYPE,
        "image_identifier": slot["image"]["identifier"],
        "image_version": slot["image"]["version"],
        "image_sha512": slot["image"].get("sha512", ""),
        "created": slot["created_at"],
        "cores": cores,
        "memory_mib": memory_mib,
        "batch_system": slot.get("batch", {}).get("system", ""),
        "batch_node": slot.get("batch", {}).get("node", ""),
    }
    starts = []
    if slot.get("drain", {}).get("requested_at"):
        starts.append(slot["drain"]["requested_at"])
    if now is not None and parse_time(slot["drain_at"], "drain_at", AccountingError) <= now:
        starts.append(slot["drain_at"])
    if starts:
        record["drain_started"] = min(format_time(parse_time(s, "drain", AccountingError)) for s in starts)
    return record


class AccountingStore:
    """The accounting database of one hypervisor."""

    def __init__(self, path: str = DEFAULT_PATH, create: bool = True, timeout: float = 60) -> None:
        self.path = os.path.abspath(path)
        if not create and not os.path.exists(self.path):
            raise AccountingError(f"path: no accounting database at {self.path}", "path")
        if create:
            os.makedirs(os.path.dirname(self.path), mode=0o750, exist_ok=True)
        try:
            self.conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
            with self._tx():
                for statement in _SCHEMA:
                    self.conn.execute(statement)
                row = self.conn.execute("SELECT version FROM schema_version").fetchone()
                if row is None:
                    self.conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
                elif row[0] > SCHEMA_VERSION:
                    raise AccountingError(
                        f"path: {self.path} has schema version {row[0]}, newer than this collection understands "
                        f"({SCHEMA_VERSION}): upgrade batchvirt.farm",
                        "path",
                    )
        except sqlite3.DatabaseError as exc:
            raise AccountingError(f"path: cannot open the accounting database {self.path}: {exc}", "path") from None
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o640)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> AccountingStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @staticmethod
    def _row(row: sqlite3.Row) -> Dict[str, Any]:
        return {k: row[k] for k in row.keys()}  # noqa: SIM118 - iterating a Row gives values

    def get(self, key: str) -> Optional[Dict[str, Any]]:
        row = self.conn.execute("SELECT * FROM lives WHERE life_id = ?", (key,)).fetchone()
        return self._row(row) if row is not None else None

    def plan(self, record: Dict[str, Any]) -> Tuple[str, Optional[Dict[str, Any]], Dict[str, Any]]:
        """(life id, stored record or None, record after the write) without writing."""
        clean = normalise(record)
        key = life_id(clean["hypervisor"], clean["slot"], clean["created"])
        before = self.get(key)
        after = dict(before) if before else {"life_id": key, **dict.fromkeys(FIELD_NAMES)}
        after.update(clean)
        for name in KEEP_EARLIEST:  # a repeated "registered" write must not move the first one
            if before and before.get(name) and clean.get(name):
                after[name] = min(before[name], clean[name])
        if before and before.get("ended"):
            # a life ends once: its first recorded end and reason stand (a slot in back-off is recorded
            # when its VM stops, and again when recycle.yml replaces it, after its drain claim)
            ended = str(before["ended"])
            after["ended"], after["end_reason"] = ended, before.get("end_reason")
            if str(after.get("drain_started") or "") > ended:
                after["drain_started"] = before.get("drain_started")
        if not after.get("worker_type"):
            after["worker_type"] = DEFAULT_WORKER_TYPE
        for name in ("image_identifier", "image_version", "image_sha512", "batch_system", "batch_node"):
            after[name] = after.get(name) or ""
        if before is None:
            after["recorded_at"] = after["updated_at"] = None
        return key, before, after

    def record(
        self, record: Dict[str, Any], now: datetime.datetime
    ) -> Tuple[bool, Dict[str, Any], Optional[Dict[str, Any]]]:
        """Write one life (insert or merge) in one transaction; returns (changed, after, before)."""
        with self._tx():
            key, before, after = self.plan(record)
            if before is not None and all(before.get(n) == after.get(n) for n in FIELD_NAMES):
                return False, before, before
            stamp = format_time(now)
            after["updated_at"] = stamp
            after["recorded_at"] = before["recorded_at"] if before else stamp
            columns = ["life_id", *FIELD_NAMES, "recorded_at", "updated_at"]
            self.conn.execute(
                "INSERT INTO lives (%s) VALUES (%s) ON CONFLICT(life_id) DO UPDATE SET %s"
                % (
                    ", ".join(columns),
                    ", ".join(["?"] * len(columns)),
                    ", ".join(f"{c} = excluded.{c}" for c in columns[1:] if c != "recorded_at"),
                ),
                [after[c] for c in columns],
            )
        return True, after, before

    def query(
        self,
        slot: Optional[str] = None,
        hypervisor: Optional[str] = None,
        worker_type: Optional[str] = None,
        image_identifier: Optional[str] = None,
        image_version: Optional[str] = None,
        end_reason: Optional[str] = None,
        status: str = "all",
        since: Optional[str] = None,
        until: Optional[str] = None,
        limit: int = 0,
    ) -> List[Dict[str, Any]]:
        """Records matching every filter given, oldest life first.

        ``since``/``until`` select lives that overlap the interval (alive at some time in it).
        ``status``: ``all``, ``open`` (not ended) or ``ended``.
        """
        where: List[str] = []
        args: List[Any] = []
        for column, value in (
            ("slot", slot),
            ("hypervisor", hypervisor),
            ("worker_type", worker_type),
            ("image_identifier", image_identifier),
            ("image_version", image_version),
            ("end_reason", end_reason),
        ):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if status == "open":
            where.append("ended IS NULL")
        elif status == "ended":
            where.append("ended IS NOT NULL")
        elif status != "all":
            raise AccountingError(f"status: {status!r} must be all, open or ended", "status")
        if since:
            where.append("(ended IS NULL OR ended >= ?)")
            args.append(format_time(parse_time(since, "since", AccountingError)))
        if until:
            where.append("created <= ?")
            args.append(format_time(parse_time(until, "until", AccountingError)))
        if limit < 0:
            raise AccountingError(f"limit: {limit} must be 0 (no limit) or more", "limit")
        sql = "SELECT * FROM lives"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created, life_id"
        if limit:
            sql += " LIMIT %d" % limit
        return [self._row(r) for r in self.conn.execute(sql, args)]

    def counts(self) -> Dict[str, Any]:
        """Ended lives by end reason and the number of open lives (for the metrics)."""
        ended: Dict[str, int] = {}
        for row in self.conn.execute(
            "SELECT end_reason, COUNT(*) AS n FROM lives WHERE ended IS NOT NULL GROUP BY end_reason"
        ):
            ended[row["end_reason"] or "removed"] = int(row["n"])
        open_row = self.conn.execute("SELECT COUNT(*) FROM lives WHERE ended IS NULL").fetchone()
        return {"ended": ended, "open": int(open_row[0])}


# -- exports ----------------------------------------------------------------------------------


def _epoch(value: Optional[str]) -> str:
    if not value:
        return ""
    return str(int(parse_time(value, "time", AccountingError).timestamp()))


def apel_row(record: Dict[str, Any], site: str, service: str) -> Dict[str, str]:
    """One APEL-style cloud usage row (times as Unix seconds, memory in MiB)."""
    start = _epoch(record["created"])
    end = _epoch(record.get("ended"))
    wall = str(int(end) - int(start)) if end else ""
    image = record.get("image_identifier") or ""
    if record.get("image_version"):
        image = f"{image}:{record['image_version']}"
    return {
        "VMUUID": record["life_id"],
        "SiteName": site,
        "CloudComputeService": service or record["hypervisor"],
        "MachineName": record["slot"],
        "LocalUserId": "",
        "LocalGroupId": record.get("worker_type") or DEFAULT_WORKER_TYPE,
        "Status": "completed" if end else "started",
        "StartTime": start,
        "EndTime": end,
        "WallDuration": wall,
        "CpuDuration": "",
        "CpuCount": "" if record.get("cores") is None else str(record["cores"]),
        "Memory": "" if record.get("memory_mib") is None else str(record["memory_mib"]),
        "ImageId": image,
        "CloudType": "batchvirt.farm",
        "BenchmarkType": "",
        "Benchmark": "",
        "Jobs": "" if record.get("jobs") is None else str(record["jobs"]),
        "EndReason": record.get("end_reason") or "",
    }


def export_text(records: List[Dict[str, Any]], fmt: str, site: str = "", service: str = "") -> str:
    """``records`` as ``jsonl`` (one JSON object a line) or ``apel_csv`` (header + one row a life)."""
    if fmt == "jsonl":
        return "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if fmt == "apel_csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(APEL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow(apel_row(record, site, service))
        return buf.getvalue()
    raise AccountingError(f"format: {fmt!r} must be jsonl or apel_csv", "format")


def write_export(path: str, text: str, check_mode: bool = False) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds it; returns changed."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    if check_mode:
        return True
    directory = os.path.dirname(os.path.abspath(path)) or "."
    tmp = os.path.join(directory, "." + os.path.basename(path) + ".tmp%d" % os.getpid())
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return True


# -- reading a slot domain --------------------------------------------------------------------


def record_from_domain(conn: Any, domain: str, now: datetime.datetime) -> Dict[str, Any]:
    """The accounting record of a slot domain from its metadata, vCPUs and memory."""
    import libvirt  # the caller checked HAS_LIBVIRT

    from ansible_collections.batchvirt.farm.plugins.module_utils._slot_metadata import (
        NAMESPACE,
        SlotMetadataError,
        from_xml,
    )

    try:
        dom = conn.lookupByName(domain)
    except libvirt.libvirtError:
        raise AccountingError(f"domain: no domain {domain!r} on this hypervisor", "domain") from None
    try:
        text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NAMESPACE, 0)
    except libvirt.libvirtError:
        raise AccountingError(
            f"domain: {domain} carries no slot metadata (not a batchvirt.farm slot); give the record fields instead",
            "domain",
        ) from None
    try:
        meta = from_xml(text)
    except SlotMetadataError as exc:
        raise AccountingError(f"domain: the slot metadata of {domain} cannot be read: {exc}", "domain") from None
    info = dom.info()
    return record_from_metadata(meta.to_dict(), cores=int(info[3]), memory_mib=int(info[1]) // 1024, now=now)


# -- the modules' logic -----------------------------------------------------------------------

FILTER_SPEC: Dict[str, Dict[str, Any]] = {
    "slot": {"type": "str"},
    "hypervisor": {"type": "str"},
    "worker_type": {"type": "str"},
    "image_identifier": {"type": "str"},
    "image_version": {"type": "str"},
    "end_reason": {"type": "str"},
    "status": {"type": "str", "default": "all", "choices": ["all", "open", "ended"]},
    "since": {"type": "str"},
    "until": {"type": "str"},
    "limit": {"type": "int", "default": 0},
}

ACCOUNTING_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "path": {"type": "path", "default": DEFAULT_PATH},
    "state": {"type": "str", "default": "present", "choices": ["present", "exported"]},
    "domain": {"type": "str"},
    "record": {"type": "dict", "default": {}},
    "end_reason": {"type": "str", "choices": list(END_REASONS)},
    "now": {"type": "str"},
    "dest": {"type": "path"},
    "format": {"type": "str", "default": "jsonl", "choices": ["jsonl", "apel_csv"]},
    "site": {"type": "str", "default": ""},
    "service": {"type": "str", "default": ""},
    "filters": {"type": "dict", "default": {}, "options": FILTER_SPEC},
}

INFO_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "path": {"type": "path", "default": DEFAULT_PATH},
    **FILTER_SPEC,
}


def _now(value: Optional[str]) -> datetime.datetime:
    from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import farm_now

    try:
        return farm_now(value)
    except ValueError as exc:
        raise AccountingError(str(exc), "now") from None


def _filters(params: Dict[str, Any]) -> Dict[str, Any]:
    return {k: params.get(k, FILTER_SPEC[k].get("default")) for k in FILTER_SPEC}


def run_accounting(params: Dict[str, Any], check_mode: bool, connect: Any = None) -> Dict[str, Any]:
    """``state=present``: record one life; ``state=exported``: write an export file."""
    now = _now(params.get("now"))
    if params["state"] == "exported":
        if not params.get("dest"):
            raise AccountingError("dest is required with state=exported", "dest")
        if not os.path.exists(params["path"]):
            records: List[Dict[str, Any]] = []
        else:
            with AccountingStore(params["path"], create=False) as store:
                records = store.query(**_filters(params["filters"]))
        text = export_text(records, params["format"], params["site"], params["service"])
        changed = write_export(params["dest"], text, check_mode)
        return {"changed": changed, "dest": params["dest"], "count": len(records), "format": params["format"]}

    record: Dict[str, Any] = {}
    if params.get("domain"):
        if connect is None:
            raise AccountingError("domain: reading a slot domain needs libvirt-python", "domain")
        conn = connect()
        try:
            record = record_from_domain(conn, params["domain"], now)
        finally:
            conn.close()
    record.update({k: v for k, v in (params.get("record") or {}).items() if v is not None})
    if params.get("end_reason"):
        record.setdefault("end_reason", params["end_reason"])
        record.setdefault("ended", format_time(now))
    if not record:
        raise AccountingError("give domain, record or both", "record")
    if check_mode and not os.path.exists(params["path"]):
        clean = normalise(record)
        key = life_id(clean["hypervisor"], clean["slot"], clean["created"])
        return {"changed": True, "life_id": key, "record": clean, "diff": {"before": {}, "after": clean}}
    with AccountingStore(params["path"]) as store:
        if check_mode:
            key, before, after = store.plan(record)
            changed = before is None or any(before.get(n) != after.get(n) for n in FIELD_NAMES)
        else:
            changed, after, before = store.record(record, now)
            key = after["life_id"]
    return {
        "changed": changed,
        "life_id": key,
        "record": after,
        "diff": {"before": before or {}, "after": after},
    }


def run_query(params: Dict[str, Any]) -> Dict[str, Any]:
    """The records matching the filters (none when the database does not exist yet)."""
    if not os.path.exists(params["path"]):
        return {"changed": False, "records": [], "count": 0, "exists": False}
    with AccountingStore(params["path"], create=False) as store:
        records = store.query(**_filters(params))
    return {"changed": False, "records": records, "count": len(records), "exists": True}
