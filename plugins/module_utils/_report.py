# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: the farm report, one self-contained HTML page drawn with plotly.

Inputs are plain data the plays gather: the ``farm_metrics`` result of each hypervisor (its
slots now) and the accounting records of every VM life (the history). The page holds
plotly.js inline (no network access when it is opened) and four figures:

* the map: one row per hypervisor, one marker per slot, coloured by lifecycle state, shaped
  by worker type;
* the rollout: VMs alive per image version over time (stacked);
* capacity accepting jobs over time: VMs and cores between registration (or creation) and
  the start of their drain (or their end);
* drains and failures over time: drain starts, lives ended by failure, other ends.

For the same inputs and the same ``now`` the output is the same (fixed element ids, sorted
inputs), so rewriting an unchanged report changes nothing.
"""

from __future__ import annotations

import datetime
import html
import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError
from ansible_collections.batchvirt.farm.plugins.module_utils._lifecycle import ACCEPTING_STATES, STATES
from ansible_collections.batchvirt.farm.plugins.module_utils._timeutil import format_time, parse_time
from ansible_collections.batchvirt.farm.plugins.module_utils._version import version_key

try:
    import plotly.graph_objects as go
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    HAS_PLOTLY = True
except ImportError:  # pragma: no cover - reported by the module
    HAS_PLOTLY = False

FAILURE_END_REASONS = ("failed", "lost")

# One colour per lifecycle state (colour-blind friendly, green = takes jobs).
STATE_COLOURS: Dict[str, str] = {
    "active": "#1a9850",
    "expiring": "#91cf60",
    "provisioning": "#4575b4",
    "draining": "#fdae61",
    "drained": "#f46d43",
    "expired": "#d73027",
    "stopped": "#878787",
}
TYPE_SYMBOLS = ("square", "circle", "diamond", "triangle-up", "star", "cross", "hexagon", "x")


class ReportError(FarmError):
    """Input the report cannot draw; ``option`` names it."""


def _t(value: Optional[str], what: str) -> Optional[datetime.datetime]:
    if not value:
        return None
    return parse_time(value, what, ReportError)


def _iso(value: datetime.datetime) -> str:
    return format_time(value)


# -- series from the accounting records ---------------------------------------------------------


def _step_series(
    intervals: List[Tuple[datetime.datetime, Optional[datetime.datetime], int]], now: datetime.datetime
) -> Tuple[List[str], List[int]]:
    """A step function of the sum of ``weight`` over the open intervals ``[start, end)``."""
    events: Dict[datetime.datetime, int] = {}
    for start, end, weight in intervals:
        events[start] = events.get(start, 0) + weight
        if end is not None:
            events[end] = events.get(end, 0) - weight
    xs: List[str] = []
    ys: List[int] = []
    level = 0
    for at in sorted(events):
        level += events[at]
        xs.append(_iso(at))
        ys.append(level)
    if xs and now > parse_time(xs[-1]):
        xs.append(_iso(now))
        ys.append(level)
    return xs, ys


def rollout_series(records: List[Dict[str, Any]], now: datetime.datetime) -> Dict[str, Tuple[List[str], List[int]]]:
    """VMs alive per ``image:version`` over time."""
    by_image: Dict[str, List[Tuple[datetime.datetime, Optional[datetime.datetime], int]]] = {}
    for r in records:
        created = parse_time(r["created"], "created", ReportError)
        key = f"{r.get('image_identifier') or '?'}:{r.get('image_version') or '?'}"
        by_image.setdefault(key, []).append((created, _t(r.get("ended"), "ended"), 1))

    def order(key: str) -> Any:
        identifier, _sep, version = key.partition(":")
        return (identifier, version_key(version))

    # a common time axis so the stacked areas line up
    axis = sorted(
        {iv[0] for ivs in by_image.values() for iv in ivs} | {iv[1] for ivs in by_image.values() for iv in ivs if iv[1]}
    )
    series: Dict[str, Tuple[List[str], List[int]]] = {}
    for key in sorted(by_image, key=order):
        xs, ys = _step_series(by_image[key], now)
        levels = dict(zip(xs, ys))
        full_x: List[str] = []
        full_y: List[int] = []
        level = 0
        for at in axis + ([now] if axis and now > axis[-1] else []):
            stamp = _iso(at)
            level = levels.get(stamp, level)
            full_x.append(stamp)
            full_y.append(level)
        series[key] = (full_x, full_y)
    return series


def accepting_series(records: List[Dict[str, Any]], now: datetime.datetime) -> Dict[str, Tuple[List[str], List[int]]]:
    """VMs and cores accepting jobs over time (registration or creation to drain start or end)."""
    vms: List[Tuple[datetime.datetime, Optional[datetime.datetime], int]] = []
    cores: List[Tuple[datetime.datetime, Optional[datetime.datetime], int]] = []
    for r in records:
        start = _t(r.get("registered"), "registered") or parse_time(r["created"], "created", ReportError)
        stops = [t for t in (_t(r.get("drain_started"), "drain_started"), _t(r.get("ended"), "ended")) if t]
        end = min(stops) if stops else None
        if end is not None and end <= start:
            continue
        vms.append((start, end, 1))
        cores.append((start, end, int(r.get("cores") or 0)))
    return {"VMs": _step_series(vms, now), "cores": _step_series(cores, now)}


def event_times(records: List[Dict[str, Any]], plays: Dict[str, Dict[str, Any]]) -> Dict[str, List[str]]:
    """Times of drain starts, failed ends, other ends and failed play runs."""
    out: Dict[str, List[str]] = {"drain started": [], "ended by failure": [], "ended": [], "play failed": []}
    for r in records:
        if r.get("drain_started"):
            out["drain started"].append(r["drain_started"])
        if r.get("ended"):
            key = "ended by failure" if r.get("end_reason") in FAILURE_END_REASONS else "ended"
            out[key].append(r["ended"])
    for entry in plays.values():
        if entry.get("last_outcome") == "failure" and entry.get("last_finished"):
            out["play failed"].append(entry["last_finished"])
    return {k: sorted(v) for k, v in out.items()}


# -- figures ---------------------------------------------------------------------------------------


def _layout(fig: Any, title: str, height: int = 380, **extra: Any) -> Any:
    fig.update_layout(
        title={"text": title, "x": 0.01},
        height=height,
        margin={"l": 60, "r": 20, "t": 50, "b": 40},
        template="plotly_white",
        legend={"orientation": "h", "y": -0.18},
        **extra,
    )
    return fig


def map_figure(snapshots: List[Dict[str, Any]]) -> Any:
    hypervisors = sorted({s["hypervisor"] for s in snapshots})  # plotly renders labels as pseudo-HTML
    types = sorted({slot.get("worker_type") or "default" for s in snapshots for slot in s.get("slots", [])})
    symbol = {t: TYPE_SYMBOLS[i % len(TYPE_SYMBOLS)] for i, t in enumerate(types)}
    fig = go.Figure()
    positions: Dict[str, int] = {}
    points: Dict[Tuple[str, str], Dict[str, List[Any]]] = {}
    for snap in sorted(snapshots, key=lambda s: s["hypervisor"]):
        for slot in sorted(snap.get("slots", []), key=lambda s: s["name"]):
            hv = snap["hypervisor"]
            col = positions.get(hv, 0)
            positions[hv] = col + 1
            wtype = slot.get("worker_type") or "default"
            point = points.setdefault((slot["lifecycle"], wtype), {"x": [], "y": [], "text": []})
            point["x"].append(col + 1)
            point["y"].append(html.escape(hv))
            point["text"].append(
                "%s<br>%s, %s<br>%s:%s<br>%s vCPU, %s MiB"
                % (
                    html.escape(slot["name"]),
                    slot["lifecycle"],
                    html.escape(wtype),
                    html.escape(slot.get("image", "")),
                    html.escape(slot.get("image_version", "")),
                    slot.get("vcpus", 0),
                    slot.get("memory_mib", 0),
                )
            )
    for state in STATES:
        for wtype in types:
            if (state, wtype) not in points:
                continue
            point = points[(state, wtype)]
            fig.add_trace(
                go.Scatter(
                    x=point["x"],
                    y=point["y"],
                    mode="markers",
                    name=f"{state} ({html.escape(wtype)})" if len(types) > 1 else state,
                    marker={
                        "color": STATE_COLOURS.get(state, "#000000"),
                        "symbol": symbol[wtype],
                        "size": 22,
                        "line": {"width": 1, "color": "#333333"},
                    },
                    text=point["text"],
                    hoverinfo="text",
                )
            )
    return _layout(
        fig,
        "Hypervisors and their slots now (colour: lifecycle state, shape: worker type)",
        height=max(260, 90 + 60 * len(hypervisors)),
        xaxis={"title": "slot", "dtick": 1, "rangemode": "tozero"},
        yaxis={
            "type": "category",
            "categoryorder": "array",
            "categoryarray": [html.escape(h) for h in hypervisors[::-1]],
        },
    )


def rollout_figure(records: List[Dict[str, Any]], now: datetime.datetime) -> Any:
    fig = go.Figure()
    for key, (xs, ys) in rollout_series(records, now).items():
        fig.add_trace(
            go.Scatter(x=xs, y=ys, name=html.escape(key), mode="lines", line={"shape": "hv"}, stackgroup="rollout")
        )
    return _layout(fig, "Rollout of image versions: VMs alive per version", yaxis={"title": "VMs"})


def capacity_figure(records: List[Dict[str, Any]], now: datetime.datetime) -> Any:
    series = accepting_series(records, now)
    fig = go.Figure()
    xs, ys = series["VMs"]
    fig.add_trace(go.Scatter(x=xs, y=ys, name="VMs accepting jobs", mode="lines", line={"shape": "hv"}))
    xs, ys = series["cores"]
    fig.add_trace(
        go.Scatter(
            x=xs, y=ys, name="cores accepting jobs", mode="lines", line={"shape": "hv", "dash": "dot"}, yaxis="y2"
        )
    )
    return _layout(
        fig,
        "Capacity accepting jobs",
        yaxis={"title": "VMs", "rangemode": "tozero"},
        yaxis2={"title": "cores", "overlaying": "y", "side": "right", "rangemode": "tozero"},
    )


def events_figure(records: List[Dict[str, Any]], plays: Dict[str, Dict[str, Any]]) -> Any:
    colours = {"drain started": "#fdae61", "ended by failure": "#d73027", "ended": "#878787", "play failed": "#762a83"}
    fig = go.Figure()
    for name, times in event_times(records, plays).items():
        if times:  # plotly warns about an empty histogram on a date axis
            fig.add_trace(go.Histogram(x=times, name=name, marker={"color": colours[name]}, nbinsx=40))
    if not fig.data:
        fig.add_annotation(text="no drains, ends or failures recorded", showarrow=False, x=0.5, y=0.5)
    return _layout(fig, "Drains and failures", barmode="stack", yaxis={"title": "events"})


def summary(snapshots: List[Dict[str, Any]], records: List[Dict[str, Any]]) -> Dict[str, Any]:
    slots = [slot for s in snapshots for slot in s.get("slots", [])]
    by_state = {state: sum(1 for s in slots if s["lifecycle"] == state) for state in STATES}
    return {
        "hypervisors": len({s["hypervisor"] for s in snapshots}),
        "slots": len(slots),
        "slots_by_lifecycle": by_state,
        "accepting": sum(1 for s in slots if s["lifecycle"] in ACCEPTING_STATES),
        "lives": len(records),
        "lives_open": sum(1 for r in records if not r.get("ended")),
        "lives_failed": sum(1 for r in records if r.get("end_reason") in FAILURE_END_REASONS),
        "jobs": sum(int(r.get("jobs") or 0) for r in records),
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.5em; margin-bottom: 0.2em; }}
.meta {{ color: #666; margin-bottom: 1em; }}
table {{ border-collapse: collapse; margin-bottom: 1em; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: right; }}
th {{ background: #f4f4f4; }}
.figure {{ margin-bottom: 1em; }}
</style>
<script type="text/javascript">{plotlyjs}</script>
</head>
<body>
<h1>{title}</h1>
<div class="meta">Generated {now} by batchvirt.farm from {hypervisors} hypervisor(s) and {lives} accounting record(s).</div>
{table}
{figures}
</body>
</html>
"""


def render(
    snapshots: List[Dict[str, Any]],
    records: List[Dict[str, Any]],
    now: datetime.datetime,
    title: str = "batchvirt.farm report",
) -> str:
    """The whole page."""
    if not HAS_PLOTLY:
        raise ReportError("the Python module plotly is not installed on this host: 'pip install plotly'")
    for i, snap in enumerate(snapshots):
        if not isinstance(snap, dict) or "hypervisor" not in snap or not isinstance(snap.get("slots", []), list):
            raise ReportError(f"snapshots[{i}] is not a farm_metrics result (hypervisor and slots)", "snapshots")
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not rec.get("created"):
            raise ReportError(f"records[{i}] is not an accounting record (created is missing)", "records")
    records = sorted(records, key=lambda r: (r["created"], r.get("life_id", "")))
    plays: Dict[str, Dict[str, Any]] = {}
    for snap in snapshots:
        for name, entry in (snap.get("plays") or {}).items():
            plays[f"{snap['hypervisor']}/{name}"] = entry
    figures = [
        ("farm-map", map_figure(snapshots)),
        ("farm-rollout", rollout_figure(records, now)),
        ("farm-capacity", capacity_figure(records, now)),
        ("farm-events", events_figure(records, plays)),
    ]
    parts = []
    for div_id, fig in figures:
        body = pio.to_html(
            fig,
            include_plotlyjs=False,
            full_html=False,
            div_id=div_id,
            config={"displaylogo": False, "responsive": True},
        )
        parts.append(f'<div class="figure">{body}</div>')
    info = summary(snapshots, records)
    head = "".join(f"<th>{html.escape(s)}</th>" for s in ["slots", *STATES, "VM lives", "open", "failed", "jobs"])
    cells = [info["slots"], *[info["slots_by_lifecycle"][s] for s in STATES]]
    cells += [info["lives"], info["lives_open"], info["lives_failed"], info["jobs"]]
    row = "".join(f"<td>{c}</td>" for c in cells)
    table = f"<table><tr>{head}</tr><tr>{row}</tr></table>"
    return _PAGE.format(
        title=html.escape(title),
        plotlyjs=get_plotlyjs(),
        now=_iso(now),
        hypervisors=info["hypervisors"],
        lives=info["lives"],
        table=table,
        figures="\n".join(parts),
    )


REPORT_ARGUMENT_SPEC: Dict[str, Dict[str, Any]] = {
    "dest": {"type": "path", "required": True},
    "snapshots": {"type": "list", "elements": "dict", "default": []},
    "records": {"type": "list", "elements": "dict", "default": []},
    "title": {"type": "str", "default": "batchvirt.farm report"},
    "now": {"type": "str"},
}


def run_report(params: Dict[str, Any], check_mode: bool) -> Dict[str, Any]:
    from ansible_collections.batchvirt.farm.plugins.module_utils._accounting import write_export
    from ansible_collections.batchvirt.farm.plugins.module_utils._inventory import farm_now

    try:
        now = farm_now(params.get("now"))
    except ValueError as exc:
        raise ReportError(str(exc), "now") from None
    page = render(params["snapshots"], params["records"], now, params["title"])
    directory = os.path.dirname(os.path.abspath(params["dest"]))
    if not os.path.isdir(directory):
        raise ReportError(f"dest: the directory {directory} does not exist", "dest")
    changed = write_export(params["dest"], page, check_mode)
    info = summary(params["snapshots"], params["records"])
    return {
        "changed": changed,
        "dest": params["dest"],
        "bytes": len(page.encode("utf-8")),
        "summary": json.loads(json.dumps(info)),
    }
