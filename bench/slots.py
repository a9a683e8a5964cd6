"""Lay out and start N slots on one hypervisor: playbooks/slots.yml vs the raw libvirt floor.

Measured in the same run (``--repeat`` times each, median, interleaved):

* floor: one Python process making the raw libvirt calls a slot needs, N times in a row:
  a qcow2 overlay volume backed by the base image (``createXML`` with ``<backingStore>``), a
  cloud-init seed ISO (pycdlib, the same three files) written into a raw volume, ``defineXML``
  and ``create()`` (start, no wait for boot). The time counts from the open connection on.
* ours: ``ansible-playbook playbooks/slots.yml`` as a user runs it (the vm_slots role: one
  ``batchvirt.farm.slot`` call with ``layout``), wall clock of the whole command;
* the same with a 1 GiB and a 20 GiB sparse base image (overlay creation must not depend on it);
* a second run of the playbook with nothing to change (``noop_seconds``);
* the overlay creation alone on each base image (``overlay_ms_1g``/``_20g``, median of 16), the
  one step that could depend on the image size, measured apart from the (noisy) domain starts.

Guests are tiny and idle: 64 MiB, TCG, booting with their "bootloader" from the sparse, empty
base image, so SeaBIOS finds nothing to boot and waits (almost no CPU; 16 booting kernels
would measure the host's CPU contention, not slot creation). They are destroyed right after
each measurement. The last line is one JSON object.

    .venv/bin/python bench/slots.py [--count 16] [--repeat 1]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
COLLECTIONS = os.path.join(ROOT, "build", "collections")
WORK = "/var/tmp/batchvirt-bench/slots"
BIN = os.path.dirname(sys.executable)
MEMORY_MIB = 64

import libvirt  # noqa: E402
import pycdlib  # noqa: E402

from tests.testbed.slotpool import SLOTS_DIR as POOL_DIR  # noqa: E402 (the tests' slots pool)
from tests.testbed.slotpool import SLOTS_POOL as POOL  # noqa: E402
from tests.testbed.slotpool import ensure_slots_pool as ensure_pool  # noqa: E402


def _quiet(*_args: object) -> None:
    pass


libvirt.registerErrorHandler(_quiet, None)


def ensure_link() -> None:
    link = os.path.join(COLLECTIONS, "ansible_collections", "batchvirt", "farm")
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


def sparse_base(size_gib: int) -> str:
    os.makedirs(WORK, exist_ok=True)
    path = os.path.join(WORK, f"base-{size_gib}g.raw")
    if not os.path.exists(path) or os.path.getsize(path) != size_gib << 30:
        with open(path, "wb") as handle:
            handle.truncate(size_gib << 30)
    return path


# -- the floor ----------------------------------------------------------------------------
def _iso(files) -> bytes:
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for n, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/F{n}.;1", rr_name=name, joliet_path="/" + name)
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


DOMAIN = """<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name><memory unit='MiB'>{mem}</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><tcg><tb-cache unit='MiB'>128</tb-cache></tcg></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{overlay}'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{seed}'/>
      <target dev='vdb' bus='virtio'/><readonly/></disk>
    <serial type='pty'><log file='/var/log/libvirt/qemu/{name}-console.log' append='off'/><target port='0'/></serial>
    <console type='pty'><target type='serial' port='0'/></console><memballoon model='none'/>
  </devices>
  <qemu:commandline><qemu:arg value='-netdev'/><qemu:arg value='user,id=hn0,hostfwd=tcp:127.0.0.1:{port}-:22'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=hn0,bus=pci.0,addr=0x10'/></qemu:commandline>
</domain>"""


def floor(count: int, base: str, guest: dict) -> float:
    start = time.perf_counter()
    conn = libvirt.open("qemu:///system")
    pool = conn.storagePoolLookupByName(POOL)
    for n in range(1, count + 1):
        name = "floor-slot-%02d" % n
        pool.createXML(
            f"<volume><name>{name}.qcow2</name><capacity unit='bytes'>{os.path.getsize(base)}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{base}</path><format type='raw'/></backingStore></volume>",
            0,
        )
        data = _iso(
            {
                "user-data": "#cloud-config\n" + json.dumps({"hostname": name, "ssh_genkeytypes": ["ed25519"]}),
                "meta-data": json.dumps({"instance-id": name + "-1", "local-hostname": name}),
            }
        )
        vol = pool.createXML(
            f"<volume><name>{name}-seed.iso</name><capacity unit='bytes'>{len(data)}</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        with open(vol.path(), "r+b") as handle:
            handle.write(data)
        dom = conn.defineXML(
            DOMAIN.format(
                name=name,
                mem=MEMORY_MIB,
                overlay=os.path.join(POOL_DIR, name + ".qcow2"),
                seed=vol.path(),
                port=13000 + n,
            )
        )
        dom.create()
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed


# -- ours ---------------------------------------------------------------------------------
def playbook(count: int, base: str, guest: dict) -> float:
    extravars = {
        "farm_slots_hosts": "localhost",
        "farm_vm_slots_hypervisor_name": "bench",
        "farm_vm_slots_profile": {"vcpus": 1, "memory_mib": MEMORY_MIB, "count": count},
        "farm_vm_slots_image": {"path": base, "format": "raw"},
        "farm_vm_slots_boot": {"mode": "bootloader"},
        "farm_vm_slots_ssh_port_base": 13100,
        "farm_vm_slots_overcommit_cpu": float(count * 4),
        "farm_vm_slots_domain_type": "qemu",
        "farm_vm_slots_cloud_init": {"ssh_genkeytypes": ["ed25519"]},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(extravars, handle)
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_ROLES_PATH=os.path.join(ROOT, "roles"),
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
    )
    cmd = [
        os.path.join(BIN, "ansible-playbook"),
        "-i",
        os.path.join(ROOT, "playbooks", "inventory", "localhost.yml"),
        os.path.join(ROOT, "playbooks", "slots.yml"),
        "-e",
        "@" + handle.name,
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    os.unlink(handle.name)
    if proc.returncode != 0:
        raise SystemExit("playbooks/slots.yml failed:\n" + proc.stdout[-3000:] + proc.stderr[-2000:])
    return elapsed


def overlay_only(base: str, rounds: int = 16) -> float:
    """Median seconds of one overlay volume creation on ``base`` (the size-dependent step, if any)."""
    conn = libvirt.open("qemu:///system")
    pool = conn.storagePoolLookupByName(POOL)
    samples = []
    for n in range(rounds):
        name = "floor-slot-ov%02d.qcow2" % n
        start = time.perf_counter()
        vol = pool.createXML(
            f"<volume><name>{name}</name><capacity unit='bytes'>{os.path.getsize(base)}</capacity>"
            "<target><format type='qcow2'/></target>"
            f"<backingStore><path>{base}</path><format type='raw'/></backingStore></volume>",
            0,
        )
        samples.append(time.perf_counter() - start)
        vol.delete(0)
    conn.close()
    return statistics.median(samples)


def cleanup(prefixes=("floor-slot-", "bench-slot-")) -> None:
    conn = libvirt.open("qemu:///system")
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefixes):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    pool = conn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefixes):
            vol.delete(0)
    for name in os.listdir("/var/log/libvirt/qemu"):
        if name.startswith(prefixes):
            os.unlink(os.path.join("/var/log/libvirt/qemu", name))
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    ensure_link()
    guest: dict = {}
    conn = libvirt.open("qemu:///system")
    ensure_pool(conn)
    conn.close()
    bases = {1: sparse_base(1), 20: sparse_base(20)}
    cleanup()
    times = {"floor_1g": [], "floor_20g": [], "ours_1g": [], "ours_20g": [], "noop": [], "ov_1g": [], "ov_20g": []}
    try:
        for _round in range(args.repeat):
            for size in (1, 20):
                times[f"ov_{size}g"].append(overlay_only(bases[size]))
                times[f"floor_{size}g"].append(floor(args.count, bases[size], guest))
                cleanup()
                times[f"ours_{size}g"].append(playbook(args.count, bases[size], guest))
                if size == 1:
                    times["noop"].append(playbook(args.count, bases[size], guest))
                cleanup()
    finally:
        cleanup()
    med = {key: statistics.median(values) for key, values in times.items()}
    for key, value in med.items():
        print(f"{key:10s} {value:7.2f} s  ({', '.join('%.2f' % v for v in times[key])})", file=sys.stderr)
    result = {
        "bench": "slots",
        "count": args.count,
        "memory_mib": MEMORY_MIB,
        "floor_seconds": round(med["floor_1g"], 2),
        "ours_seconds": round(med["ours_1g"], 2),
        "ratio_vs_floor": round(med["ours_1g"] / med["floor_1g"], 2),
        "size_ratio_20g_vs_1g": round(med["ours_20g"] / med["ours_1g"], 2),
        "floor_size_ratio_20g_vs_1g": round(med["floor_20g"] / med["floor_1g"], 2),
        "noop_seconds": round(med["noop"], 2),
        "overlay_ms_1g": round(med["ov_1g"] * 1000, 1),
        "overlay_ms_20g": round(med["ov_20g"] * 1000, 1),
        "repeat": args.repeat,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
