"""Pre-stage one 2 GiB image over HTTP from a local server: batchvirt.farm vs get_url vs the floor.

Measured in the same run, each repeated (median of ``--repeat``, interleaved):

* floor: ``curl -s URL | tee FILE | sha512sum`` (download, write and hash in one pipeline);
* durable floor: the same, then ``sync FILE`` (the data on disk, as the image cache guarantees);
* ours: the image cache staging the image (``ImageCache.stage``: resumable HTTP download hashed
  in the same pass, fsync, atomic rename into the pool directory), in a fresh Python process;
* ours without fsync: the same with ``fsync: false`` (what the floor does: page cache only);
* ours through Ansible: ``ansible localhost -m batchvirt.farm.image`` (adds Ansible's start-up);
* get_url: ``ansible localhost -m ansible.builtin.get_url`` with ``checksum: sha512:...``.

The image (incompressible bytes) is generated once under ``/var/tmp/batchvirt-bench`` and
reused; the server is ``tests/integration/images/_server.py`` (``os.sendfile``) in its own
process. The last line is one JSON object.

    .venv/bin/python bench/prestage.py [--size-mib 2048] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, "build", "collections")
WORK = "/var/tmp/batchvirt-bench"
BIN = os.path.dirname(sys.executable)


def ensure_link() -> None:
    link = os.path.join(COLLECTIONS, "ansible_collections", "batchvirt", "farm")
    if not os.path.lexists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(ROOT, link)


def ensure_image(size: int) -> tuple:
    """The bench image and its sha512 (cached beside it, keyed on size and mtime)."""
    os.makedirs(os.path.join(WORK, "www"), exist_ok=True)
    path = os.path.join(WORK, "www", "prestage-%d.img" % size)
    meta = path + ".sha512"
    if os.path.exists(path) and os.path.getsize(path) == size and os.path.exists(meta):
        with open(meta, encoding="ascii") as fh:
            stamp, digest = fh.read().split()
        if stamp == str(int(os.path.getmtime(path))):
            return path, digest
    print("generating %s (%d MiB) once" % (path, size >> 20), file=sys.stderr)
    sha = hashlib.sha512()
    with open(path, "wb") as fh:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            fh.write(chunk)
            sha.update(chunk)
            left -= len(chunk)
    digest = sha.hexdigest()
    with open(meta, "w", encoding="ascii") as fh:
        fh.write("%d %s\n" % (int(os.path.getmtime(path)), digest))
    return path, digest


SERVER = """
import sys, time
sys.path.insert(0, %(root)r)
from tests.integration.images._server import ImageServer
srv = ImageServer(%(directory)r).start()
print(srv.port, flush=True)
sys.stdin.read()
srv.stop()
"""

STAGE = """
import sys, time
sys.path.insert(0, %(collections)r)
from ansible_collections.batchvirt.farm.plugins.module_utils._image_cache import ImageCache
cache = ImageCache(%(root)r)
with cache.lock(timeout=60):
    began = time.monotonic()
    result = cache.stage("bench", "1", %(url)r, %(size)d, %(sha512)r, "raw", fetch_options={"fsync": %(fsync)r})
    print(time.monotonic() - began, result.transferred)
"""


CPU: dict = {}


def timed(argv, env=None, key: str = "") -> float:
    """Wall seconds of one command; its CPU seconds (user + system) are added to CPU[key]."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    elapsed = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(key, []).append(cpu)
    if proc.returncode != 0:
        raise SystemExit(
            "%s failed (%d):\n%s\n%s" % (argv[:3], proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
        )
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib << 20
    ensure_link()
    image, sha512 = ensure_image(size)
    scratch = tempfile.mkdtemp(prefix="prestage-", dir=WORK)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER % {"root": ROOT, "directory": os.path.dirname(image)}],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline())
        url = "http://127.0.0.1:%d/%s" % (port, os.path.basename(image))
        env = dict(
            os.environ,
            ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
            ANSIBLE_PYTHON_INTERPRETER=sys.executable,
            ANSIBLE_LOCALHOST_WARNING="False",
            ANSIBLE_INVENTORY_UNPARSED_WARNING="False",
            PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
        )
        ansible = [os.path.join(BIN, "ansible"), "localhost", "-c", "local"]
        floor_file = os.path.join(scratch, "floor.img")
        geturl_file = os.path.join(scratch, "get_url.img")
        cache_root = os.path.join(scratch, "images")
        times: dict = {
            "floor": [],
            "floor_durable": [],
            "ours": [],
            "ours_nofsync": [],
            "ours_ansible": [],
            "get_url": [],
        }

        def reset() -> None:
            for path in (floor_file, geturl_file):
                if os.path.exists(path):
                    os.unlink(path)
            for path in (cache_root, cache_root + ".cache"):
                shutil.rmtree(path, ignore_errors=True)

        floor_cmd = "set -o pipefail; curl -sf %s | tee %s | sha512sum" % (url, floor_file)
        for round_no in range(args.repeat):
            reset()
            times["floor"].append(timed(["bash", "-c", floor_cmd], key="floor"))
            reset()
            times["floor_durable"].append(
                timed(["bash", "-c", floor_cmd + " && sync " + floor_file], key="floor_durable")
            )
            for key, fsync in (("ours", True), ("ours_nofsync", False)):
                reset()
                code = STAGE % {
                    "collections": COLLECTIONS,
                    "root": cache_root,
                    "url": url,
                    "size": size,
                    "sha512": sha512,
                    "fsync": fsync,
                }
                times[key].append(timed([sys.executable, "-c", code], key=key))
            reset()
            image_args = (
                "identifier=bench version=1 format=raw refresh_pool=false root=%s source=%s sha512=%s size=%d"
                % (cache_root, url, sha512, size)
            )
            times["ours_ansible"].append(
                timed([*ansible, "-m", "batchvirt.farm.image", "-a", image_args], env=env, key="ours_ansible")
            )
            reset()
            geturl_args = "url=%s dest=%s checksum=sha512:%s timeout=60" % (url, geturl_file, sha512)
            times["get_url"].append(
                timed([*ansible, "-m", "ansible.builtin.get_url", "-a", geturl_args], env=env, key="get_url")
            )
            print(
                "round %d: " % (round_no + 1) + ", ".join("%s %.2f s" % (k, v[-1]) for k, v in times.items()),
                file=sys.stderr,
            )
        reset()
    finally:
        server.stdin.close()
        server.wait(timeout=30)
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "bench": "prestage",
        "size_bytes": size,
        "repeat": args.repeat,
        "floor_seconds": round(med["floor"], 3),
        "floor_durable_seconds": round(med["floor_durable"], 3),
        "ours_seconds": round(med["ours"], 3),
        "ours_nofsync_seconds": round(med["ours_nofsync"], 3),
        "ours_ansible_seconds": round(med["ours_ansible"], 3),
        "get_url_seconds": round(med["get_url"], 3),
        "ratio_vs_floor": round(med["ours"] / med["floor"], 3),
        "ratio_vs_get_url": round(med["ours_ansible"] / med["get_url"], 3),
        "ratio_vs_durable_floor": round(med["ours"] / med["floor_durable"], 3),
        "ratio_nofsync_vs_floor": round(med["ours_nofsync"] / med["floor"], 3),
        "ratio_ansible_vs_floor": round(med["ours_ansible"] / med["floor"], 3),
        "cpu_seconds": {k: round(statistics.median(v), 2) for k, v in CPU.items()},
        "load_average": round(os.getloadavg()[0], 1),
        "floor_mib_per_s": round(size / med["floor"] / 2**20, 1),
        "ours_mib_per_s": round(size / med["ours"] / 2**20, 1),
    }
    print(
        "ours/floor %.3f (target <= 1.1; durable floor %.3f, ours without fsync %.3f), "
        "ours/get_url via ansible %.3f (target < 1)"
        % (
            result["ratio_vs_floor"],
            result["ratio_vs_durable_floor"],
            result["ratio_nofsync_vs_floor"],
            result["ratio_vs_get_url"],
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
