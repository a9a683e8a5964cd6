"""One emulated hypervisor, run as its own process (in its own network namespace): what the
``image`` module does with a BitTorrent source — fetch into a partial path, check sha512 as the
image cache does, move into place, keep seeding for a while.  Prints one JSON line.

    python hypervisor.py SOURCE DEST SIZE SHA512 STATE_DIR TIMEOUT SEED_SECONDS [ENGINE_SETTINGS_JSON]

BVT_SWARM_INDEX / BVT_SWARM_SIZE in the environment: this hypervisor's swarm share.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(HERE))), "build", "collections")]

from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_fetch, _torrent_jobs, _torrent_meta  # noqa: E402


def main() -> int:
    source, dest, size, sha512, state_dir, timeout, seed_seconds = sys.argv[1:8]
    settings = json.loads(sys.argv[8]) if len(sys.argv) > 8 else {}
    partial = dest + ".part"
    started = time.monotonic()
    t_main = time.time()
    try:
        result = _torrent_fetch.fetch(
            source,
            partial,
            int(size),
            sha512,
            float(timeout),
            state_dir=state_dir,
            seed_for_seconds=float(seed_seconds),
            engine_settings=settings,
            swarm_index=os.environ.get("BVT_SWARM_INDEX"),
            swarm_size=os.environ.get("BVT_SWARM_SIZE"),
        )
    except _torrent_meta.TorrentError as exc:
        print(json.dumps({"failed": True, "msg": exc.message}))
        return 1
    t_fetched = time.time()
    digest = hashlib.sha512()
    with open(partial, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != sha512:
        print(json.dumps({"failed": True, "msg": f"sha512 mismatch for {partial}"}))
        return 1
    os.replace(partial, dest)
    seconds = time.monotonic() - started
    seeder = _torrent_jobs.start_seeding(result["torrent"], dest, float(seed_seconds), state_dir=state_dir)
    print(
        json.dumps(
            {
                "failed": False,
                "seconds": seconds,
                "t_main": t_main,
                "t_fetched": t_fetched,
                "t_verified": time.time(),
                "seeder_pid": seeder["pid"],
                "info_hash": result["info_hash"],
                "sources": result.get("sources", {}),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
