# Copyright (c) batchvirt.farm contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private to batchvirt.farm: image downloads into the cache's partial area (file, HTTP(S), BitTorrent).

:func:`fetch` writes ``uri`` to ``dest`` (a path in the partial area) and verifies the
published size and sha512 *in the same pass* as the download: the data is hashed while it
is written, never read back. A partial file left by an interrupted run is resumed: its
prefix is hashed once (hashlib state cannot be saved), then the rest is requested with an
HTTP ``Range`` header (or read from the offset for ``file://``). The parts: the sink that
writes and hashes in one pass (``_transfer_sink``), HTTP(S) with proxies and redirects
(``_transfer_http``), BitTorrent (``_torrent_fetch``); this file dispatches and copies files.

Failures raise :class:`TransferError` with a message naming the URL and what happened and
a ``resumable`` flag: True when the partial file is a correct prefix worth keeping (the
connection stalled or broke), False when it must be discarded (checksum or size mismatch,
HTTP 404).

HTTP(S) downloads honour ``http_proxy``, ``https_proxy`` and ``no_proxy`` and refuse a
redirect from ``https`` to ``http`` (see ``_transfer_http``).

``magnet:`` links and ``*.torrent`` sources go to the BitTorrent transport
(``_torrent_fetch.fetch``) when it is installed with the collection.
"""

from __future__ import annotations

import os
import time
import urllib.parse
from typing import Any, Dict, Optional

from ansible_collections.batchvirt.farm.plugins.module_utils._transfer_http import fetch_http
from ansible_collections.batchvirt.farm.plugins.module_utils._transfer_sink import (
    BUFSIZE,
    Sink,
    TransferError,
    TransferResult,
    hash_prefix,
    resume_point,
)

__all__ = ["TransferError", "TransferResult", "fetch", "start_seeding"]


def fetch(
    uri: str,
    dest: str,
    size: int,
    sha512: str,
    timeout: float = 60,
    connect_timeout: float = 30,
    total_timeout: Optional[float] = None,
    validate_certs: bool = True,
    ca_path: Optional[str] = None,
    allow_file: bool = True,
    headers: Optional[Dict[str, str]] = None,
    fsync: bool = True,
    **opts: Any,
) -> TransferResult:
    """Download ``uri`` into ``dest`` (resuming it), verify size and sha512 in the same pass.

    ``timeout``: seconds without any data before a stalled transfer fails; ``connect_timeout``:
    seconds to establish the connection; ``total_timeout``: optional bound on the whole transfer.
    """
    sha512 = sha512.lower()
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme == "magnet" or (scheme in ("http", "https", "file", "") and parsed.path.endswith(".torrent")):
        # The BitTorrent engine bounds the whole download, not the silence between packets.
        return _fetch_torrent(uri, dest, size, sha512, total_timeout or 3600, **opts)
    started = time.monotonic()
    if scheme == "file":
        if not allow_file:
            raise TransferError(
                "%s: file:// sources are not allowed here (allow them explicitly)" % uri, option="source"
            )
        result = _fetch_file(uri, urllib.parse.unquote(parsed.path), dest, size, sha512, fsync)
    elif scheme in ("http", "https"):
        result = fetch_http(
            uri,
            dest,
            size,
            sha512,
            timeout=timeout,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            validate_certs=validate_certs,
            ca_path=ca_path,
            headers=headers or {},
            fsync=fsync,
        )
    else:
        raise TransferError(
            "%s: unsupported source scheme %r: use http://, https://, file://, a magnet: link or a .torrent"
            % (uri, scheme or "(none)"),
            option="source",
        )
    result.seconds = time.monotonic() - started
    return result


def _fetch_torrent(uri: str, dest: str, size: int, sha512: str, timeout: float, **opts: Any) -> TransferResult:
    """BitTorrent through ``_torrent_fetch.fetch``, then the sha512 of the whole file.

    Pieces arrive out of order (each checked by the engine against the torrent's SHA-1 piece
    hashes), so the sha512 the list publishes can only be computed once the file is complete:
    this is the one transport that reads the file a second time.
    """
    try:
        from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_fetch
    except ImportError:
        raise TransferError(
            "%s: BitTorrent sources (magnet: links, .torrent files) need the BitTorrent transport, which this "
            "installation of batchvirt.farm does not have; use an http(s):// or file:// URI" % uri
        ) from None
    started = time.monotonic()
    resumed_from = resume_point(dest, size)
    try:
        outcome = _torrent_fetch.fetch(uri, dest, size, sha512, timeout, **opts)
    except Exception as exc:
        raise TransferError(
            "%s: %s" % (uri, getattr(exc, "message", None) or exc), resumable=os.path.exists(dest)
        ) from None
    try:
        actual = os.path.getsize(dest)
    except OSError:
        raise TransferError("%s: the BitTorrent transport left no file at %s" % (uri, dest)) from None
    if actual != size:
        raise TransferError(
            "size mismatch for %s: the torrent delivered %d bytes, the list publishes %d; refused" % (uri, actual, size)
        )
    digest, _done = hash_prefix(dest, size)
    if digest.hexdigest() != sha512:
        raise TransferError(
            "sha512 mismatch for %s: got %s..., the list publishes %s...; the file is refused and deleted "
            "(the torrent does not hold the endorsed image)" % (uri, digest.hexdigest()[:16], sha512[:16])
        )
    transferred = size - resumed_from
    if isinstance(outcome, dict) and isinstance(outcome.get("downloaded"), int):
        transferred = outcome["downloaded"]
    return TransferResult(
        uri=uri,
        path=dest,
        size=size,
        sha512=sha512,
        transferred=transferred,
        resumed_from=resumed_from,
        seconds=time.monotonic() - started,
        torrent=str(outcome.get("torrent") or "") if isinstance(outcome, dict) else "",
    )


def start_seeding(result: Any, path: str, options: Dict[str, Any]) -> Optional[str]:
    """After a BitTorrent image became ready at ``path``: seed it for ``seed_for_seconds``.

    Returns a warning when seeding could not start (the image stays ready).
    """
    torrent = getattr(result, "torrent", "")
    seconds = options.get("seed_for_seconds")
    if not torrent or not seconds:
        return None
    try:
        from ansible_collections.batchvirt.farm.plugins.module_utils import _torrent_jobs

        # every engine option of the fetch, so a seeder started afresh behaves like the fetch's engine
        keys = (
            "state_dir",
            "engine_dir",
            "listen_port",
            "trackers",
            "web_seeds",
            "web_seed_delay",
            "max_upload_limit",
            "max_download_limit",
            "dht",
            "engine_settings",
        )
        _torrent_jobs.start_seeding(torrent, path, float(seconds), **{k: options[k] for k in keys if k in options})
    except Exception as exc:
        return "the image is ready but seeding it over BitTorrent did not start: %s" % (
            getattr(exc, "message", None) or exc
        )
    return None


def _fetch_file(uri: str, source: str, dest: str, size: int, sha512: str, fsync: bool) -> TransferResult:
    try:
        actual = os.path.getsize(source)
    except OSError as exc:
        raise TransferError("%s: cannot read %s: %s" % (uri, source, exc.strerror)) from None
    if actual != size:
        raise TransferError(
            "size mismatch for %s: the file has %d bytes, the list publishes %d; refused" % (uri, actual, size)
        )
    offset = resume_point(dest, size)
    sink = Sink(uri, dest, size, offset, fsync)
    try:
        with open(source, "rb") as src:
            src.seek(sink.written)
            while True:
                chunk = src.read(BUFSIZE)
                if not chunk:
                    break
                sink.write(chunk)
        digest = sink.finish(sha512, fsync)
    except TransferError:
        sink.abort()
        raise
    except OSError as exc:
        sink.abort()
        raise TransferError("%s: read failed: %s" % (uri, exc), resumable=True) from None
    return TransferResult(uri, dest, size, digest, sink.received, offset, 0.0)
