# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: BitTorrent metadata: make and read an image's ``.torrent``.

Part of the BitTorrent transport for images, whose files are named after what they do:

- ``_torrent_meta`` (this file): :class:`TorrentError`, :func:`make_torrent` (the publisher
  creates a ``.torrent`` for an image file, with trackers and the image's HTTP URL as BEP-19
  web seed), :func:`read_torrent`, and :func:`load_torrent_params` (the same with libtorrent);
- ``_torrent_fetch``: :func:`~._torrent_fetch.fetch`, a hypervisor downloads an image;
- ``_torrent_jobs``: the engine processes seen from the caller: install the engine, launch,
  :func:`~._torrent_jobs.start_seeding`, :func:`~._torrent_jobs.stop_seeding`,
  :func:`~._torrent_jobs.seeding_status`;
- ``_torrent_engine``: the engine process (one torrent: download, then seed);
- ``_torrent_seeder``: the origin seeder process (many torrents, the ``image_seeder`` role);
- ``_torrent_launch``: the launcher that starts either from the engine's root-owned directory.

Torrent metadata is created and read with the pure-Python ``torf`` library (PyPI), so no
bencoding is written here; where libtorrent is loaded anyway (a hypervisor's fetch), it reads
them instead. This file is also part of the installed engine (``_torrent_jobs.ENGINE_FILES``):
it imports nothing but the standard library and ``_errors`` at load time.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Dict, Optional, Sequence

from ansible_collections.batchvirt.farm.plugins.module_utils._errors import FarmError


class TorrentError(FarmError):
    """A BitTorrent operation failed; ``message`` names the source and what failed, ``option``
    the input to blame when one is (``piece_length``, ``listen_port``, ``engine_dir``...)."""


def _torf() -> Any:
    try:
        import torf  # noqa: PLC0415 (optional dependency, checked at use)
    except ImportError as exc:
        raise TorrentError(
            message="the Python library 'torf' is required for BitTorrent images: install it with "
            "'pip install torf' (it is listed in the collection's requirements.txt)"
        ) from exc
    return torf


def torrent_info(torrent: Any) -> Dict[str, Any]:
    """The facts about a torf ``Torrent`` that callers need."""
    meta = torrent.metainfo["info"]
    return {
        "info_hash": torrent.infohash,
        "name": torrent.name,
        "size": int(meta["length"]) if "length" in meta else int(torrent.size),
        "single_file": "length" in meta,
        "piece_length": int(torrent.piece_size),
        "pieces": int(torrent.pieces),
        "trackers": [url for tier in (torrent.trackers or []) for url in tier],
        "web_seeds": list(torrent.webseeds or []),
        "magnet": str(torrent.magnet()),
    }


def read_torrent(path: str) -> Dict[str, Any]:
    """Read a ``.torrent`` file; raise :class:`TorrentError` naming it when it is not one."""
    torf = _torf()
    try:
        torrent = torf.Torrent.read(path)
    except (torf.TorfError, OSError) as exc:
        raise TorrentError(message=f"{path} is not a readable .torrent file: {exc}") from exc
    return torrent_info(torrent)


def load_torrent_params(lt: Any, path: str) -> Any:
    """libtorrent's ``add_torrent_params`` for the ``.torrent`` at ``path``: ``ti`` with the
    torrent's trackers in ``trackers`` and its web seeds in ``url_seeds`` (not in ``ti``).

    ``load_torrent_file`` where the binding has it (libtorrent 2.0.7 and later); otherwise the
    same through ``torrent_info``'s accessors, which libtorrent 2.1 deprecates (``trackers()``,
    ``web_seeds()``), so that no deprecation warning reaches the caller's output.
    Raises whatever the binding raises for a file that is not a torrent.
    """
    loader = getattr(lt, "load_torrent_file", None)
    if loader is not None:
        return loader(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ti = lt.torrent_info(path)
        atp = lt.add_torrent_params()
        atp.trackers = [entry.url for entry in ti.trackers()]
        atp.url_seeds = [seed["url"] for seed in ti.web_seeds()]
        ti.set_web_seeds([])
    atp.ti = ti
    return atp


def read_torrent_lt(lt: Any, path: str) -> Dict[str, Any]:
    """:func:`read_torrent` with libtorrent, where it is loaded anyway (a hypervisor's fetch): the
    same facts without importing torf, which costs a hypervisor more CPU than the rest of its start."""
    try:
        atp = load_torrent_params(lt, path)
    except Exception as exc:  # noqa: BLE001 (the binding raises RuntimeError and others)
        raise TorrentError(message=f"{path} is not a readable .torrent file: {exc}") from None
    ti = atp.ti
    return {
        "info_hash": str(ti.info_hashes().v1),
        "name": ti.name(),
        "size": int(ti.total_size()),
        "single_file": ti.num_files() == 1,
        "piece_length": int(ti.piece_length()),
        "pieces": int(ti.num_pieces()),
        "trackers": list(atp.trackers),
        "web_seeds": list(atp.url_seeds),
        "magnet": lt.make_magnet_uri(ti),
    }


def default_piece_length(size: int) -> int:
    """About 1,000–2,000 pieces: 64 KiB for images up to 128 MiB, up to 16 MiB for 20+ GiB ones.

    Enough pieces matter more than their size: a piece is traded only once a peer holds all of
    it, so the fewer the pieces, the longer the swarm waits at the start and in the endgame
    (see docs/performance/torrent.md: 128 pieces of 256 KiB for a 32 MiB image were slower)."""
    length = 64 * 1024
    while size // length > 2048 and length < 16 * 1024 * 1024:
        length *= 2
    return length


def _unchanged(
    output: str, path: str, size: int, piece_length: int, trackers: Sequence[str], seeds: Sequence[str]
) -> Optional[Dict[str, Any]]:
    """The facts of ``output`` when it already describes ``path`` as asked and is newer than it."""
    if not os.path.exists(output) or os.path.getmtime(output) < os.path.getmtime(path):
        return None
    try:
        current = read_torrent(output)
    except TorrentError:
        return None
    same = (
        current["name"] == os.path.basename(path)
        and current["size"] == size
        and current["piece_length"] == piece_length
        and current["trackers"] == list(trackers)
        and current["web_seeds"] == list(seeds)
    )
    return current if same else None


def make_torrent(
    path: str,
    tracker_urls: Sequence[str],
    web_seeds: Sequence[str],
    piece_length: Optional[int] = None,
    output: Optional[str] = None,
    comment: Optional[str] = None,
) -> Dict[str, Any]:
    """Create (or keep) the ``.torrent`` for the single image file ``path``.

    ``output`` defaults to ``path + ".torrent"``. The file is left alone (``changed`` false)
    when it already describes ``path`` with the same trackers, web seeds and piece length and
    is newer than the image, so a rerun does not hash 10 GB again.
    Returns :func:`torrent_info` plus ``path`` (of the .torrent) and ``changed``.
    """
    torf = _torf()
    if not os.path.isfile(path):
        raise TorrentError(message=f"cannot create a torrent for {path}: not a regular file", option="path")
    output = output or path + ".torrent"
    size = os.path.getsize(path)
    if size == 0:
        raise TorrentError(message=f"cannot create a torrent for {path}: the file is empty", option="path")
    piece_length = piece_length or default_piece_length(size)
    if piece_length < 16384 or piece_length & (piece_length - 1):
        raise TorrentError(
            message=f"piece_length {piece_length} must be a power of two of at least 16384", option="piece_length"
        )
    trackers = list(tracker_urls)
    seeds = list(web_seeds)
    current = _unchanged(output, path, size, piece_length, trackers, seeds)
    if current is not None:
        return dict(current, path=output, changed=False)
    torrent = torf.Torrent(
        path=path,
        trackers=trackers or None,
        webseeds=seeds or None,
        piece_size=piece_length,
        comment=comment,
        created_by="batchvirt.farm",
    )
    try:
        torrent.generate()
    except torf.TorfError as exc:
        raise TorrentError(message=f"hashing {path} for its torrent failed: {exc}") from exc
    tmp = output + ".tmp"
    torrent.write(tmp, overwrite=True)
    os.replace(tmp, output)
    return dict(torrent_info(torrent), path=output, changed=True)
