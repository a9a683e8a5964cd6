"""Verifier of the hypervisor scenario: libvirtd answers, the hypervisor role's pools and
network exist, and a VM booted from the base image answers SSH and finishes cloud-init.

The VM is a test-only domain (QEMU user-mode network with a 127.0.0.1 port forward, a qcow2
overlay on the base image, a NoCloud seed ISO); the slot module replaces it in production.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from typing import Dict, Iterator
from xml.sax.saxutils import escape

import pytest

testinfra_hosts = ["local://"]

URI = "qemu:///system"
BASE_DIR = os.environ.get("FARM_BASE_IMAGE_DIR", "/var/lib/batchvirt/base")
IMAGE_NAME = os.environ.get("FARM_BASE_IMAGE_NAME", "worker-base")
WORK = "/var/lib/batchvirt/molecule-hypervisor"
ROOT = os.environ.get("MOLECULE_PROJECT_DIRECTORY") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", "..", "..", "..")
)
# Under TCG on an idle 2-core host a boot takes 30-50 s; a loaded host is several times slower.
BOOT_TIMEOUT = float(os.environ.get("BVT_BOOT_TIMEOUT", "600"))
TIMES_FILE = os.path.join(WORK, "boot-times.json")


def virsh(host, *args: str) -> str:
    cmd = host.run("virsh -c %s %s", URI, " ".join(args))
    assert cmd.rc == 0, f"virsh {' '.join(args)} failed: {cmd.stderr}"
    return cmd.stdout


def hypervisor_record() -> Dict:
    """What the hypervisor role set up: its record (/etc/batchvirt/hypervisor.json), else its defaults."""
    import yaml

    record = "/etc/batchvirt/hypervisor.json"
    if os.path.exists(record):
        with open(record, encoding="utf-8") as f:
            return json.load(f)
    path = os.path.join(ROOT, "roles", "hypervisor", "defaults", "main.yml")
    if not os.path.exists(path):
        pytest.skip("the hypervisor role is not in this tree yet")
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f) or {}
    return {
        "network_mode": d.get("farm_hypervisor_network_mode"),
        "network_name": ""
        if d.get("farm_hypervisor_network_mode") == "user"
        else d.get("farm_hypervisor_network_name"),
        "pools": {
            "images": {"name": d.get("farm_hypervisor_images_pool_name")},
            "slots": {"name": d.get("farm_hypervisor_slots_pool_name")},
        },
    }


def test_libvirtd_answers(host):
    out = virsh(host, "version")
    assert re.search(r"Running hypervisor: QEMU \d", out), out


@pytest.mark.parametrize("pool", ["images", "slots"])
def test_pool_active(host, pool):
    name = hypervisor_record()["pools"][pool]["name"]
    info = virsh(host, "pool-info", name)
    assert re.search(r"^State:\s+running$", info, re.M), f"pool {name} is not running:\n{info}"
    assert re.search(r"^Autostart:\s+yes$", info, re.M), f"pool {name} does not autostart:\n{info}"


def test_network_present(host):
    record = hypervisor_record()
    if record["network_mode"] == "user":
        # QEMU user-mode networking: no libvirt network; the VM test below uses its loopback forward.
        assert not record["network_name"], record
        return
    info = virsh(host, "net-info", record["network_name"])
    assert re.search(r"^Active:\s+yes$", info, re.M), f"network {record['network_name']} is not active:\n{info}"


def test_description_file():
    latest = os.path.join(BASE_DIR, IMAGE_NAME + ".json")
    with open(latest, encoding="utf-8") as f:
        desc = json.load(f)
    for key in ("identifier", "version", "format", "file", "size", "sha512", "boot", "recipe_sha256", "created"):
        assert key in desc, f"{key} missing from {latest}"
    assert desc["identifier"] == IMAGE_NAME
    assert desc["format"] == "qcow2"
    assert os.path.getsize(desc["file"]) == desc["size"]
    assert sorted(desc["boot"]["modes"]) == ["bootloader", "kernel"]
    for key in ("kernel", "initrd"):
        assert os.path.isfile(desc["boot"][key]), f"boot.{key} {desc['boot'][key]} is not a file"
    assert "root=LABEL=rootfs" in desc["boot"]["cmdline"]


def domain_type() -> str:
    """kvm when the host's capabilities offer it and the CPU can really virtualise, else qemu."""
    forced = os.environ.get("BVT_DOMAIN_TYPE")
    if forced:
        return forced
    caps = subprocess.run(["virsh", "-c", URI, "capabilities"], capture_output=True, text=True, check=True).stdout
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        flags = f.read()
    hw = re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M) is not None
    if "<domain type='kvm'" in caps and hw and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "qemu"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_iso(path: str, user_data: str, meta_data: str) -> None:
    """A NoCloud seed (volume label cidata) with user-data and meta-data."""
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for name, text in (("user-data", user_data), ("meta-data", meta_data)):
        data = text.encode()
        iso_name = "/" + name.upper().replace("-", "_") + ".;1"
        from io import BytesIO

        iso.add_fp(BytesIO(data), len(data), iso_name, rr_name=name, joliet_path="/" + name)
    iso.write(path)
    iso.close()


def domain_xml(name: str, mode: str, desc: Dict, overlay: str, seed: str, port: int, console: str) -> str:
    dtype = domain_type()
    if mode == "kernel":
        boot = (
            f"<kernel>{escape(desc['boot']['kernel'])}</kernel><initrd>{escape(desc['boot']['initrd'])}</initrd>"
            f"<cmdline>{escape(desc['boot']['cmdline'])}</cmdline>"
        )
    else:
        boot = "<boot dev='hd'/>"
    tcg = "<tcg><tb-cache unit='MiB'>128</tb-cache></tcg>" if dtype == "qemu" else ""
    return f"""<domain type='{dtype}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <features><acpi/>{tcg}</features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{escape(overlay)}'/><target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='{escape(seed)}'/><target dev='hdc' bus='ide'/><readonly/>
    </disk>
    <serial type='file'><source path='{escape(console)}'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/><qemu:arg value='user,id=hn0,hostfwd=tcp:127.0.0.1:{port}-:22'/>
    <qemu:arg value='-device'/><qemu:arg value='virtio-net-pci,netdev=hn0,bus=pci.0,addr=0x10'/>
  </qemu:commandline>
</domain>
"""


def ssh(key: str, port: int, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command in the guest; a hung connection (a slow guest) counts as a failed attempt."""
    argv = [
        "ssh", "-i", key, "-p", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
        "debian@127.0.0.1", command,
    ]  # fmt: skip
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", f"timed out after {timeout} s")


@pytest.fixture
def vm(request) -> Iterator[Dict]:
    """Define a test VM from the base image; destroy, undefine and remove its files afterwards."""
    mode = request.param
    with open(os.path.join(BASE_DIR, IMAGE_NAME + ".json"), encoding="utf-8") as f:
        desc = json.load(f)
    os.makedirs(WORK, mode=0o755, exist_ok=True)
    name = f"bvt-molecule-basevm-{mode}"
    overlay = os.path.join(WORK, name + ".qcow2")
    seed = os.path.join(WORK, name + "-seed.iso")
    key = os.path.join(WORK, name + "-key")
    console = os.path.join(WORK, name + "-console.log")
    for path in (key, key + ".pub"):
        if os.path.exists(path):
            os.unlink(path)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    with open(key + ".pub", encoding="utf-8") as f:
        pubkey = f.read().strip()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", desc["file"], overlay],
        check=True,
    )
    seed_iso(
        seed,
        "#cloud-config\nssh_authorized_keys:\n  - " + pubkey + "\n",
        f"instance-id: {name}-{int(time.time())}\nlocal-hostname: {name}\n",
    )
    port = free_port()
    xml_path = os.path.join(WORK, name + ".xml")
    with open(xml_path, "w", encoding="utf-8") as f:
        f.write(domain_xml(name, mode, desc, overlay, seed, port, console))
    subprocess.run(["virsh", "-c", URI, "define", xml_path], check=True, capture_output=True)
    try:
        yield {"name": name, "mode": mode, "port": port, "key": key, "console": console}
    finally:
        subprocess.run(["virsh", "-c", URI, "destroy", name], capture_output=True, check=False)
        subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True, check=False)
        for path in (overlay, seed, key, key + ".pub", xml_path):
            if os.path.exists(path):
                os.unlink(path)


def record(mode: str, figures: Dict[str, float]) -> None:
    times = {}
    if os.path.exists(TIMES_FILE):
        with open(TIMES_FILE, encoding="utf-8") as f:
            times = json.load(f)
    times[mode] = figures
    with open(TIMES_FILE, "w", encoding="utf-8") as f:
        json.dump(times, f, indent=2)


@pytest.mark.slow
@pytest.mark.parametrize("vm", ["bootloader", "kernel"], indirect=True)
def test_vm_from_base_image_answers_ssh_and_finishes_cloud_init(host, vm):
    start = time.monotonic()
    virsh(host, "start", vm["name"])
    ssh_at = None
    while time.monotonic() - start < BOOT_TIMEOUT:
        res = ssh(vm["key"], vm["port"], "true", timeout=20)
        if res.returncode == 0:
            ssh_at = time.monotonic() - start
            break
        time.sleep(1)
    console = ""
    if os.path.exists(vm["console"]):
        with open(vm["console"], errors="replace") as f:
            console = f.read()[-3000:]
    assert ssh_at is not None, f"{vm['name']} ({vm['mode']} boot) did not answer SSH in {BOOT_TIMEOUT} s:\n{console}"
    done_at = None
    status = ""
    while time.monotonic() - start < BOOT_TIMEOUT:
        status = ssh(vm["key"], vm["port"], "cloud-init status").stdout
        if "status: done" in status or "status: error" in status:
            done_at = time.monotonic() - start
            break
        time.sleep(1)
    assert "status: done" in status, f"cloud-init on {vm['name']} did not finish cleanly: {status!r}"
    assert done_at is not None
    uname = ssh(vm["key"], vm["port"], "uname -r; python3 --version; locale | head -1").stdout
    assert "Python 3" in uname, uname
    record(vm["mode"], {"ssh_s": round(ssh_at, 1), "cloud_init_done_s": round(done_at, 1)})
    print(f"\n{vm['name']}: SSH after {ssh_at:.1f} s, cloud-init done after {done_at:.1f} s; {uname}")
