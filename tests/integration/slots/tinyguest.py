"""A tiny guest for slot tests and the slot benchmark: a Debian cloud kernel and a busybox
initramfs that prints a marker on the serial console and idles (shell in ~5 s under TCG).

Fetched with ``apt-get download`` from the configured Debian mirror (the only network the
test machines have) into a cache directory, and built without root-only tools.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile

CACHE = os.environ.get("BVT_TINYGUEST_CACHE", "/var/cache/batchvirt-test/tinyguest")
MARKER = "BATCHVIRT-TINYGUEST-UP"
INIT = (
    """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo "%s $(cat /proc/cmdline)" > /dev/ttyS0
while true; do sleep 3600; done
"""
    % MARKER
)


def _kernel_package() -> str:
    out = subprocess.run(
        ["apt-cache", "depends", "linux-image-cloud-amd64"], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("apt-cache: linux-image-cloud-amd64 has no linux-image dependency: run apt-get update")


def _download(package: str, into: str) -> str:
    subprocess.run(["apt-get", "download", package], cwd=into, capture_output=True, check=True)
    found = glob.glob(os.path.join(into, package.split(":", maxsplit=1)[0] + "_*.deb"))
    if not found:
        raise RuntimeError(f"apt-get download {package} produced no .deb in {into}")
    return found[0]


def _cpio_newc(root: str, out_path: str) -> None:
    """A gzip'ed newc cpio of ``root`` (pure Python: no cpio tool needed)."""
    import gzip
    import stat

    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            entries.append(os.path.join(dirpath, name))
    data = bytearray()

    def add(name: str, mode: int, body: bytes, ino: int) -> None:
        namez = name.encode() + b"\0"
        header = "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x" % (
            ino,
            mode,
            0,
            0,
            1,
            0,
            len(body),
            0,
            0,
            0,
            0,
            len(namez),
            0,
        )
        data.extend(header.encode() + namez)
        data.extend(b"\0" * ((4 - len(data) % 4) % 4))
        data.extend(body)
        data.extend(b"\0" * ((4 - len(data) % 4) % 4))

    for ino, path in enumerate(entries, start=1):
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            add(rel, st.st_mode, os.readlink(path).encode(), ino)
        elif stat.S_ISDIR(st.st_mode):
            add(rel, st.st_mode, b"", ino)
        else:
            with open(path, "rb") as handle:
                add(rel, st.st_mode, handle.read(), ino)
    add("TRAILER!!!", 0, b"", 0)
    with gzip.open(out_path, "wb", compresslevel=1) as handle:
        handle.write(bytes(data))


def ensure() -> dict:
    """Kernel, initramfs and a small qcow2 base image in the cache; returns their paths."""
    kernel = os.path.join(CACHE, "vmlinuz")
    initrd = os.path.join(CACHE, "initrd.gz")
    base = os.path.join(CACHE, "base.qcow2")
    if not (os.path.exists(kernel) and os.path.exists(initrd)):
        os.makedirs(CACHE, exist_ok=True)
        work = tempfile.mkdtemp(prefix="tinyguest-")
        os.chmod(work, 0o755)  # apt-get download runs as _apt when it can
        try:
            kdeb = _download(_kernel_package(), work)
            bdeb = _download("busybox-static", work)
            kroot = os.path.join(work, "k")
            subprocess.run(["dpkg-deb", "-x", kdeb, kroot], check=True)
            vmlinuz = glob.glob(os.path.join(kroot, "boot", "vmlinuz-*"))[0]
            broot = os.path.join(work, "b")
            subprocess.run(["dpkg-deb", "-x", bdeb, broot], check=True)
            root = os.path.join(work, "root")
            for sub in ("bin", "proc", "sys", "dev", "tmp"):
                os.makedirs(os.path.join(root, sub))
            shutil.copy2(os.path.join(broot, "bin", "busybox"), os.path.join(root, "bin", "busybox"))
            with open(os.path.join(root, "init"), "w", encoding="utf-8") as handle:
                handle.write(INIT)
            os.chmod(os.path.join(root, "init"), 0o755)
            _cpio_newc(root, initrd + ".tmp")
            shutil.copy2(vmlinuz, kernel + ".tmp")
            os.rename(initrd + ".tmp", initrd)
            os.rename(kernel + ".tmp", kernel)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    if not os.path.exists(base):
        make_base(base, "64M")
    return {"kernel": kernel, "initrd": initrd, "base": base, "cmdline": "console=ttyS0 quiet", "marker": MARKER}


def make_base(path: str, size: str) -> str:
    """A sparse qcow2 (or its header only): enough as a backing file for kernel-booted guests."""
    if not os.path.exists(path):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path + ".tmp", size], check=True)
        os.rename(path + ".tmp", path)
    return path
