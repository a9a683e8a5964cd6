# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: BitTorrent fetch: a hypervisor downloads an image a magnet: URI or a .torrent describes.

:func:`fetch` downloads into a partial path; the caller (the image cache, through
``_transfer``) verifies size and sha512 and moves the file into place while the engine
(``_torrent_engine``, started through ``_torrent_jobs``) already serves the pieces.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.parse
from typing import Any, Dict, Optional, Tuple

from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_engine import libtorrent_module, read_json
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_jobs import (
    DEFAULT_ENGINE_DIR,
    DEFAULT_STATE_DIR,
    engine_said,
    forget,
    launch,
    make_job,
    pid_alive,
    record,
    state_paths,
    stop_seeding,
)
from ansible_collections.batchvirt.farm.plugins.module_utils._torrent_meta import TorrentError, read_torrent_lt

MAX_TORRENT_FILE = 64 * 1024 * 1024


def obtain_torrent(source: str, work_dir: str, timeout: float) -> str:
    """A local path to the .torrent that ``source`` names (downloaded when it is a URL)."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme in ("http", "https"):
        from ansible.module_utils.urls import open_url  # noqa: PLC0415 (the engine runs without Ansible)

        target = os.path.join(work_dir, "source.torrent")
        try:
            with open_url(source, timeout=timeout) as resp, open(target, "wb") as out:
                data = resp.read(MAX_TORRENT_FILE + 1)
                if len(data) > MAX_TORRENT_FILE:
                    raise TorrentError(message=f"{source}: the .torrent is larger than 64 MiB; refusing it")
                out.write(data)
        except TorrentError:
            raise
        except Exception as exc:  # urllib raises many types; the message names the source
            raise TorrentError(message=f"downloading the torrent file {source} failed: {exc}") from exc
        return target
    if parsed.scheme == "file":
        return urllib.parse.unquote(parsed.path)
    if parsed.scheme == "":
        return source
    raise TorrentError(
        message=f"{source}: unsupported BitTorrent source; use a magnet: URI, a .torrent path, "
        "or a file://, http:// or https:// URL of a .torrent",
        option="source",
    )


def _identify(
    lt: Any, source: str, work_dir: str, timeout: float, size: Optional[int]
) -> Tuple[str, Optional[Dict[str, Any]], str]:
    """``(info hash, facts of the torrent or None for a magnet, local .torrent path or "")``;
    refuses a torrent of several files or of another size than the image list says."""
    if source.startswith("magnet:"):
        try:
            return str(lt.parse_magnet_uri(source).info_hashes.v1), None, ""
        except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
            raise TorrentError(message=f"{source}: not a valid magnet URI: {exc}", option="source") from None
    target = obtain_torrent(source, work_dir, timeout)
    info = read_torrent_lt(lt, target)
    if not info["single_file"]:
        raise TorrentError(message=f"{source}: the torrent holds several files; an image torrent must hold one")
    if size is not None and info["size"] != int(size):
        raise TorrentError(
            message=f"{source}: the torrent describes {info['size']} bytes but the image list says "
            f"{size}; the torrent is not for this image version"
        )
    return info["info_hash"], info, target


def _wait_until_done(
    source: str,
    dest: str,
    paths: Dict[str, str],
    pid: int,
    info_hash: str,
    state_dir: str,
    timeout: float,
    started: float,
) -> Dict[str, Any]:
    """The engine's final status once the file is complete; raises (and stops the engine) when
    it reports an error, exits, or ``timeout`` passes."""
    deadline = started + timeout
    while True:
        status = read_json(paths["status"]) or {}
        if status.get("done"):
            return status
        if status.get("state") == "error":
            stop_seeding(info_hash, state_dir)
            raise TorrentError(message=f"fetching {source} into {dest} failed: {engine_said(paths)}")
        if not pid_alive(pid, info_hash):
            time.sleep(0.2)  # a status written just before it ended normally
            status = read_json(paths["status"]) or {}
            if status.get("done"):
                return status
            raise TorrentError(
                message=f"fetching {source} into {dest} failed: the BitTorrent engine exited: {engine_said(paths)}"
            )
        if time.monotonic() > deadline:
            said = engine_said(paths)
            stop_seeding(info_hash, state_dir)
            kept = os.path.exists(dest)
            raise TorrentError(
                message=f"timed out after {timeout:g} s fetching {source} into {dest} "
                f"({'partial data kept for a resume' if kept else 'nothing downloaded'}); no peer or web "
                f"seed delivered verified pieces in time. Engine said: {said}"
            )
        time.sleep(0.05)


def _check_complete(source: str, dest: str, size: int, info_hash: str, state_dir: str) -> None:
    actual = os.path.getsize(dest) if os.path.exists(dest) else -1
    if actual != size:
        stop_seeding(info_hash, state_dir)
        raise TorrentError(
            message=f"fetching {source}: the engine finished but {dest} holds {actual} of "
            f"{size} bytes; the download is incomplete"
        )


def fetch(
    source: str,
    dest_partial_path: str,
    size: Optional[int],
    sha512: Optional[str],
    timeout: float,
    **opts: Any,
) -> Dict[str, Any]:
    """Download the single-file torrent ``source`` into ``dest_partial_path``.

    A detached engine process (libtorrent) downloads, checks every piece against the torrent's
    SHA-1 piece hashes as it arrives (pieces from a peer with bad data are discarded and fetched
    again), and returns here as soon as the file is complete and written out.  With
    ``seed_for_seconds`` the same process goes on seeding (no gap while the caller verifies and
    moves the file; :func:`~._torrent_jobs.start_seeding` then points it at the final path),
    otherwise it ends.  A partial file from an interrupted run is re-checked and resumed.
    ``size`` is compared with the torrent before anything is downloaded.  ``sha512`` is NOT
    computed here: the image cache verifies it before the image becomes ready.

    Options (``opts``): ``state_dir`` (engine state and kept .torrent files; default
    ``/var/lib/batchvirt/torrent``), ``engine_dir`` (the engine's root-owned directory; default
    ``/usr/libexec/batchvirt/torrent-engine``), ``listen_port`` (``"6881-6999"``: the first
    free port), ``trackers`` and ``web_seeds`` (extra, added to the torrent's),
    ``web_seed_delay`` (seconds without data from any peer before the web seeds are used; 3),
    ``seed_for_seconds``, ``max_upload_limit`` / ``max_download_limit`` (bytes/s), ``dht``
    (false), ``engine_settings`` (extra libtorrent settings), ``swarm_index`` and
    ``swarm_size`` (this host's share among the hosts fetching together: see
    ``_Engine._share`` in ``_torrent_engine``).

    Raises :class:`TorrentError` naming ``source`` on a timeout or any failure.
    """
    del sha512  # verified by the caller (see above)
    lt = libtorrent_module()
    state_dir = opts.get("state_dir") or DEFAULT_STATE_DIR
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    dest = os.path.abspath(dest_partial_path)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix="bvt-torrent-", dir=state_dir)
    try:
        info_hash, info, target = _identify(lt, source, work, timeout, size)
        paths = state_paths(state_dir, info_hash)
        stop_seeding(info_hash, state_dir)  # an engine of an earlier run for this torrent
        if info is not None:
            shutil.copyfile(target, paths["torrent"] + ".tmp")
            os.replace(paths["torrent"] + ".tmp", paths["torrent"])
        seed_for = float(opts.get("seed_for_seconds") or 0)
        # Seeding continues until start_seeding() sets the real end; without it, until the
        # download's deadline plus the seeding time (a bound, should the caller die).
        until = time.time() + timeout + seed_for if seed_for > 0 else 0.0
        job = make_job(info_hash, dest, until, opts)
        job.update(torrent=paths["torrent"] if info is not None else "", magnet="" if info else source)
        pid = launch(state_dir, info_hash, job, opts.get("engine_dir") or DEFAULT_ENGINE_DIR)
        status = _wait_until_done(source, dest, paths, pid, info_hash, state_dir, timeout, started)
        if info is None:  # a magnet: the engine saved the metadata as <info hash>.torrent
            info = read_torrent_lt(lt, paths["torrent"])
        _check_complete(source, dest, info["size"], info_hash, state_dir)
        if seed_for > 0:
            record(info, paths, pid, dest, until)
        else:
            forget(paths)
        return dict(
            info,
            source=source,
            path=dest,
            torrent=paths["torrent"],
            engine="libtorrent",
            verified="piece-sha1",
            downloaded=int(status.get("downloaded") or 0),
            sources=dict(status.get("sources") or {}),
            seeding=seed_for > 0,
            elapsed=round(time.monotonic() - started, 3),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
